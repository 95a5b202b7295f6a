// AVX2 peak loop (peaks.h): float32 FMA on twelve independent ymm accumulators. The avx2 tier
// has no int8 or bf16 dot product the kernels use, so those kinds report 0.
#include <immintrin.h>

#include "bench/peaks.h"

namespace ggtune::bench {
namespace {
volatile float g_sink;
}

int64_t peak_loop_avx2(PeakKind kind, int64_t iterations) {
  if (kind != PeakKind::f32) return 0;
  constexpr int kChains = 12;
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-7f);
  __m256 acc[kChains];
  for (auto& v : acc) v = _mm256_set1_ps(1.0f);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (auto& v : acc) v = _mm256_fmadd_ps(v, a, b);
    __asm__ volatile("" : : "v"(acc[0]), "v"(acc[kChains - 1]));
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  g_sink = _mm256_cvtss_f32(sum);
  return iterations * kChains * 16;
}

}  // namespace ggtune::bench
