// AVX-512 VNNI rows of the int8 matrix-vector product (qgemv.h): R = 4 weight rows at a time,
// each 32-block decoded to codes in a ymm register (quant/codes_simd.h) and dotted with the M
// rows of A's codes by one vpdpbusd each; per row and A row, 8 float lanes accumulate
// dot * dw * da, and the offsets cw * sa add up in a scalar.
#include <immintrin.h>

#include <cmath>

#include "gemm/qgemv.h"
#include "quant/codes.h"
#include "quant/codes_simd.h"

namespace ggtune::gemm {
namespace {

constexpr int kRows = 4;  // weight rows per pass

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Codes of 32-block types, read from the GGUF row in place.
template <class Block>
struct BlockRows {
  const uint8_t* w;
  int64_t row_bytes;
  __m256i codes(int64_t r, int64_t b, float* d, float* c) const {
    const Block* row = reinterpret_cast<const Block*>(w + r * row_bytes);
    // The same block of the next pass's row: weights stream from memory once per token, and
    // the hardware prefetcher alone kept them at 6 GB/s (head replay: 5.0 -> 3.2 ms with this).
    _mm_prefetch(reinterpret_cast<const char*>(row + b) + kRows * row_bytes, _MM_HINT_T0);
    return block_codes(row[b], d, c);
  }
};

// Codes unpacked beforehand (K-quants), rows r0.. at u + (r - r0) * ld, scales at ldd.
struct UnpackedRows {
  const uint8_t* u;
  const float *d, *c;
  int64_t ld, ldd, r0;
  __m256i codes(int64_t r, int64_t b, float* dd, float* cc) const {
    *dd = d[(r - r0) * ldd + b];
    *cc = c[(r - r0) * ldd + b];
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + (r - r0) * ld + 32 * b));
  }
};

// out[m, r + i] for i < R, m < M.
template <int M, int R, class Src>
void rows_kernel(const Src& src, int64_t r, int64_t blocks, const QuantizedA& a, float* out,
                 int64_t ldo, bool accumulate) {
  __m256 acc[R][M];
  float off[R][M];
  for (int i = 0; i < R; ++i)
    for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_ps(), off[i][m] = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i qa[M];
    float da[M], sa[M];
    for (int m = 0; m < M; ++m) {
      qa[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + m * a.ldq + kQBlock * b));
      da[m] = a.d[m * a.lds + b];
      sa[m] = a.s[m * a.lds + b];
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      float d, c;
      const __m256i u = src.codes(r + i, b, &d, &c);
      for (int m = 0; m < M; ++m) {
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, qa[m]);
        acc[i][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * da[m]), acc[i][m]);
        off[i][m] = std::fma(c, sa[m], off[i][m]);  // fused in every instance: same bits
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int m = 0; m < M; ++m) {
      const float v = hsum(acc[i][m]) + off[i][m];
      float& o = out[m * ldo + r + i];
      o = accumulate ? o + v : v;
    }
}

template <int M, class Src>
void rows_with(const Src& src, int64_t r0, int64_t r1, int64_t blocks, const QuantizedA& a,
               float* out, int64_t ldo, bool accumulate) {
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) rows_kernel<M, kRows>(src, r, blocks, a, out, ldo, accumulate);
  for (; r < r1; ++r) rows_kernel<M, 1>(src, r, blocks, a, out, ldo, accumulate);
}

template <class Src>
void rows_any_m(const Src& src, int64_t r0, int64_t r1, int64_t M, int64_t blocks,
                const QuantizedA& a, float* out, int64_t ldo, bool accumulate) {
  switch (M) {
    case 1: return rows_with<1>(src, r0, r1, blocks, a, out, ldo, accumulate);
    case 2: return rows_with<2>(src, r0, r1, blocks, a, out, ldo, accumulate);
    case 3: return rows_with<3>(src, r0, r1, blocks, a, out, ldo, accumulate);
    default: return rows_with<4>(src, r0, r1, blocks, a, out, ldo, accumulate);
  }
}

template <class Block>
void block_rows(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t blocks,
                const QuantizedA& a, bool accumulate) {
  rows_any_m(BlockRows<Block>{w.w, w.row_bytes}, r0, r1, M, blocks, a, w.out, w.ldo, accumulate);
}

// K-quants: kRows rows unpacked into L1 (unpack_row_u8), then the same kernel.
void unpacked_rows(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
                   const QuantizedA& a, bool accumulate, uint8_t* scratch) {
  const int64_t blocks = q_blocks(K);
  auto* d = reinterpret_cast<float*>(scratch);
  float* c = d + kRows * blocks;
  uint8_t* u = reinterpret_cast<uint8_t*>(c + kRows * blocks);
  for (int64_t r = r0; r < r1; r += kRows) {
    const int64_t n = r1 - r < kRows ? r1 - r : kRows;
    for (int64_t i = 0; i < n; ++i)
      unpack_row_u8(w.type, w.w + (r + i) * w.row_bytes, K, u + i * K, d + i * blocks, c + i * blocks);
    rows_any_m(UnpackedRows{u, d, c, K, blocks, r}, r, r + n, M, blocks, a, w.out, w.ldo, accumulate);
  }
}

}  // namespace

bool gemv_rows_avx512(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
                      const QuantizedA& a, bool accumulate, uint8_t* scratch) {
  static_assert(kRows == kGemvScratchRows, "scratch holds one pass of unpacked rows");
  if (M < 1 || M > kGemvMaxRows) return false;
  const int64_t blocks = q_blocks(K);
  switch (w.type) {
    case GgmlType::Q4_0: block_rows<BlockQ4_0>(w, r0, r1, M, blocks, a, accumulate); return true;
    case GgmlType::Q4_1: block_rows<BlockQ4_1>(w, r0, r1, M, blocks, a, accumulate); return true;
    case GgmlType::Q5_0: block_rows<BlockQ5_0>(w, r0, r1, M, blocks, a, accumulate); return true;
    case GgmlType::Q5_1: block_rows<BlockQ5_1>(w, r0, r1, M, blocks, a, accumulate); return true;
    case GgmlType::Q8_0: block_rows<BlockQ8_0>(w, r0, r1, M, blocks, a, accumulate); return true;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: unpacked_rows(w, r0, r1, M, K, a, accumulate, scratch); return true;
    default: return false;
  }
}

}  // namespace ggtune::gemm
