// AVX-512 micro-kernels: MR x 32 tiles, 2 zmm columns of accumulators per row.
// float32 with vfmadd231ps; bfloat16 pairs with vdpbf16ps (two k per instruction).
#include <immintrin.h>

#include <array>
#include <utility>

#include "gemm/kernels.h"

namespace ggtune::gemm {
namespace {

constexpr int kMr = 12, kNr = 32;
static_assert(kMr * kNr <= kMaxTileElems);

// Stores the accumulators of M rows: columns [0, 16) and [16, 32), masked to n.
template <int M>
inline void store_tile(__m512 (&acc)[M][2], float* c, int64_t ldc, int n, float alpha,
                       float beta) {
  const __mmask16 m0 = n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? 0xffff : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    float* row = c + i * ldc;
    __m512 r0 = _mm512_mul_ps(acc[i][0], va), r1 = _mm512_mul_ps(acc[i][1], va);
    if (beta != 0.0f) {
      r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, row), vb, r0);
      r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, row + 16), vb, r1);
    }
    _mm512_mask_storeu_ps(row, m0, r0);
    _mm512_mask_storeu_ps(row + 16, m1, r1);
  }
}

template <int M>
void kernel_f32(int64_t kcp, const void* a_strip, const void* b_strip, float* c, int64_t ldc,
                int n, float alpha, float beta) {
  const auto* a = static_cast<const float*>(a_strip);
  const auto* b = static_cast<const float*>(b_strip);
  __m512 acc[M][2];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kcp; ++k, a += kMr, b += kNr) {
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr), _MM_HINT_T0);
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  store_tile<M>(acc, c, ldc, n, alpha, beta);
}

template <int M>
void kernel_bf16(int64_t kcp, const void* a_strip, const void* b_strip, float* c, int64_t ldc,
                 int n, float alpha, float beta) {
  const auto* a = static_cast<const int32_t*>(a_strip);  // one bf16 pair per row and k pair
  const auto* b = static_cast<const uint16_t*>(b_strip);
  __m512 acc[M][2];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < kcp / 2; ++kp, a += kMr, b += 2 * kNr) {
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * 2 * kNr), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * 2 * kNr + 32), _MM_HINT_T0);
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(a[i]);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
  store_tile<M>(acc, c, ldc, n, alpha, beta);
}

using RowKernel = void (*)(int64_t, const void*, const void*, float*, int64_t, int, float, float);

// Tables of the kernels for 1..MR rows, so edge strips of A run no padded rows.
template <size_t... I>
constexpr auto f32_rows(std::index_sequence<I...>) {
  return std::array<RowKernel, sizeof...(I)>{kernel_f32<int(I) + 1>...};
}
template <size_t... I>
constexpr auto bf16_rows(std::index_sequence<I...>) {
  return std::array<RowKernel, sizeof...(I)>{kernel_bf16<int(I) + 1>...};
}

constexpr auto kF32Rows = f32_rows(std::make_index_sequence<kMr>());
constexpr auto kBf16Rows = bf16_rows(std::make_index_sequence<kMr>());

void micro_f32(int64_t kcp, const void* a, const void* b, float* c, int64_t ldc, int m, int n,
               float alpha, float beta) {
  kF32Rows[m - 1](kcp, a, b, c, ldc, n, alpha, beta);
}

void micro_bf16(int64_t kcp, const void* a, const void* b, float* c, int64_t ldc, int m, int n,
                float alpha, float beta) {
  kBf16Rows[m - 1](kcp, a, b, c, ldc, n, alpha, beta);
}

}  // namespace

const KernelSet& kernels_avx512() {
  // kc = 800 covers SmolLM2's K = 576 in one pass and 1536 in two, so C is read back at most
  // once (a kc of 256 re-reads C twice more and measured ~25% slower on 576 -> 49152, where
  // C does not fit any cache); the B strip (kc x 32 floats, 100 KB) then streams from L2 at
  // ~11 bytes per cycle, which L2 sustains. mc = 264 keeps the A block (~0.8 MB) and the B
  // panel (kc x 256, ~0.8 MB) in L2 together.
  static const KernelSet set{kMr, kNr, micro_f32, micro_bf16, {800, 264, 256}, {800, 264, 256}};
  return set;
}

}  // namespace ggtune::gemm
