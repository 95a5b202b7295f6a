// The int8 matrix-vector driver and its scalar reference (qgemv.h).
#include "gemm/qgemv.h"

#include <algorithm>
#include <vector>

#include "dispatch.h"
#include "gemm/scratch.h"
#include "parallel.h"
#include "quant/codes.h"

namespace ggtune::gemm {
namespace {

// Rows per thread below which a second thread costs more than it saves (a hand-over is a few
// microseconds; 64 rows of K = 576 are about as long).
constexpr int64_t kRowsPerThread = 64;

void gemv_rows(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
               const QuantizedA& a, bool accumulate) {
  thread_local ScratchBuffer buffer;
  auto* scratch = static_cast<uint8_t*>(buffer.get(gemv_scratch_bytes(K)));
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 && gemv_rows_avx512(w, r0, r1, M, K, a, accumulate, scratch))
    return;
#endif
  gemv_rows_scalar(w, r0, r1, M, K, a, accumulate, scratch);
}

}  // namespace

bool gemv_covers(GgmlType type, int64_t M) { return M >= 1 && M <= kGemvMaxRows && has_u8_codes(type); }

void gemv_rows_scalar(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
                      const QuantizedA& a, bool accumulate, uint8_t* scratch) {
  const int64_t blocks = q_blocks(K);
  auto* d = reinterpret_cast<float*>(scratch);
  float* c = d + blocks;
  uint8_t* u = reinterpret_cast<uint8_t*>(c + blocks);
  for (int64_t r = r0; r < r1; ++r) {
    unpack_row_u8_scalar(w.type, w.w + r * w.row_bytes, K, u, d, c);
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* qa = a.q + m * a.ldq;
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        for (int64_t k = b * kQBlock; k < (b + 1) * kQBlock; ++k) dot += int32_t(u[k]) * qa[k];
        acc += float(dot) * (d[b] * a.d[m * a.lds + b]) + c[b] * a.s[m * a.lds + b];
      }
      float& out = w.out[m * w.ldo + r];
      out = accumulate ? out + acc : acc;
    }
  }
}

void run_q8_gemv(int64_t M, int64_t K, const QuantizedA& a, const GemvWeight* weights,
                 int64_t count, bool accumulate) {
  // The weights' rows, concatenated: weight i holds rows [start[i], start[i + 1]).
  std::vector<int64_t> start(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) start[i + 1] = start[i] + weights[i].n;
  parallel_for(start[count], kRowsPerThread, [&](int64_t g0, int64_t g1) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r0 = std::max(g0, start[i]) - start[i], r1 = std::min(g1, start[i + 1]) - start[i];
      if (r0 < r1) gemv_rows(weights[i], r0, r1, M, K, a, accumulate);
    }
  });
}

}  // namespace ggtune::gemm
