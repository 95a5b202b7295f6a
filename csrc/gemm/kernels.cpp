// Scalar reference micro-kernel and the tier switch.
#include "gemm/kernels.h"

#include "dispatch.h"

namespace ggtune::gemm {
namespace {

constexpr int kMr = 4, kNr = 8;
static_assert(kMr * kNr <= kMaxTileElems);

void kernel_f32_scalar(int64_t kcp, const void* a_strip, const void* b_strip, float* c,
                       int64_t ldc, int m, int n, float alpha, float beta) {
  const auto* a = static_cast<const float*>(a_strip);
  const auto* b = static_cast<const float*>(b_strip);
  float acc[kMr][kNr] = {};
  for (int64_t k = 0; k < kcp; ++k)
    for (int i = 0; i < kMr; ++i)
      for (int j = 0; j < kNr; ++j) acc[i][j] += a[k * kMr + i] * b[k * kNr + j];
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float& out = c[i * ldc + j];
      out = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * out;
    }
}

}  // namespace

const KernelSet& kernels_scalar() {
  static const KernelSet set{kMr, kNr, kernel_f32_scalar, nullptr, {256, 256, 1024},
                             {256, 256, 1024}};
  return set;
}

const KernelSet& active_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return kernels_avx512();
    case Isa::avx2: return kernels_avx2();
    default: break;
  }
#endif
  return kernels_scalar();
}

}  // namespace ggtune::gemm
