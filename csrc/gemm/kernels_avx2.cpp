// AVX2 + FMA micro-kernel: MR x 16 tiles, 2 ymm columns of accumulators per row.
// This tier has no bf16 dot product: bf16 precision runs this kernel on bf16-rounded panels.
#include <immintrin.h>

#include <array>
#include <utility>

#include "gemm/kernels.h"

namespace ggtune::gemm {
namespace {

constexpr int kMr = 6, kNr = 16;
static_assert(kMr * kNr <= kMaxTileElems);

template <int M>
inline void store_rows(const __m256 (&acc)[M][2], float* c, int64_t ldc, float alpha,
                       float beta) {
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    float* row = c + i * ldc;
    __m256 r0 = _mm256_mul_ps(acc[i][0], va), r1 = _mm256_mul_ps(acc[i][1], va);
    if (beta != 0.0f) {
      r0 = _mm256_fmadd_ps(_mm256_loadu_ps(row), vb, r0);
      r1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + 8), vb, r1);
    }
    _mm256_storeu_ps(row, r0);
    _mm256_storeu_ps(row + 8, r1);
  }
}

template <int M>
void kernel_f32(int64_t kcp, const void* a_strip, const void* b_strip, float* c, int64_t ldc,
                int n, float alpha, float beta) {
  const auto* a = static_cast<const float*>(a_strip);
  const auto* b = static_cast<const float*>(b_strip);
  __m256 acc[M][2];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kcp; ++k, a += kMr, b += kNr) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  if (n == kNr) {
    store_rows<M>(acc, c, ldc, alpha, beta);
    return;
  }
  // Edge tile: through a full-width buffer, then the valid columns (scalar tail).
  float tile[M * kNr];
  store_rows<M>(acc, tile, kNr, 1.0f, 0.0f);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < n; ++j) {
      float& out = c[i * ldc + j];
      out = beta == 0.0f ? alpha * tile[i * kNr + j] : alpha * tile[i * kNr + j] + beta * out;
    }
}

using RowKernel = void (*)(int64_t, const void*, const void*, float*, int64_t, int, float, float);

template <size_t... I>
constexpr auto row_table(std::index_sequence<I...>) {
  return std::array<RowKernel, sizeof...(I)>{kernel_f32<int(I) + 1>...};
}

constexpr auto kRows = row_table(std::make_index_sequence<kMr>());

void micro_f32(int64_t kcp, const void* a, const void* b, float* c, int64_t ldc, int m, int n,
               float alpha, float beta) {
  kRows[m - 1](kcp, a, b, c, ldc, n, alpha, beta);
}

}  // namespace

const KernelSet& kernels_avx2() {
  // As on avx512 (kernels_avx512.cpp), with a shallower kc for the half-width B strip.
  static const KernelSet set{kMr, kNr, micro_f32, nullptr, {512, 264, 256}, {512, 264, 256}};
  return set;
}

}  // namespace ggtune::gemm
