// Portable vector helpers for the op kernels (norm, activation, loss, attention, lora, convert).
//
// A kernel is written once as a template over a vector type V and instantiated per
// tier: `Scalar` (width 1, the reference) in the portable file, `Avx2` in *_avx2.cpp,
// `Avx512` in *_avx512.cpp. `for_chunks` runs a body on full vectors, then on the
// scalar tail with `Scalar`, so every SIMD loop ends in a scalar tail without a
// second copy of the body.
//
// Everything here has internal linkage (anonymous namespace): the same template
// compiled with different -m flags in different files must never be merged by the
// linker, or a scalar-tier caller could end up in AVX-512 code.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/blocks.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ggtune::ops {
namespace {

struct Scalar {
  using T = float;
  static constexpr int W = 1;
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T set1(float x) { return x; }
  static T zero() { return 0.0f; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T div(T a, T b) { return a / b; }
  static T fmadd(T a, T b, T c) { return a * b + c; }
  static T fnmadd(T a, T b, T c) { return c - a * b; }
  static T max(T a, T b) { return a > b ? a : b; }
  static float hsum(T v) { return v; }
  static float hmax(T v) { return v; }
  static T exp(T x) { return std::exp(x); }
  static T zero_below(T x, T limit, T y) { return x < limit ? 0.0f : y; }  // x < limit ? 0 : y
  static T select_ge(T x, T limit, T a, T b) { return x >= limit ? a : b; }  // x >= limit ? a : b
  // table[binary16 bits of x rounded to nearest even]: a lookup over every half value
  static T lookup_half(const float* table, T x) { return table[fp32_to_fp16(x)]; }
  // bfloat16 bits <-> float32: exact one way, round to nearest even (NaN stays NaN) the other
  static T load_bf16(const uint16_t* p) { return bf16_to_fp32(*p); }
  static void store_bf16(uint16_t* p, T v) { *p = fp32_to_bf16(v); }
};

// exp(x) for a SIMD type: Cephes' expf (range reduction by ln2 in two parts, a degree-6
// polynomial on [-ln2/2, ln2/2], scaling by 2^n through the exponent bits); about 1 ulp.
// Inputs below -87.3 give exactly 0 (softmax of masked or tiny scores), above 88 are clamped.
template <class V>
inline typename V::T exp_poly(typename V::T x) {
  using T = typename V::T;
  const T lo = V::set1(-87.33654f);
  const T clamped = V::max(V::min(x, V::set1(88.0f)), lo);
  const T n = V::round(V::mul(clamped, V::set1(1.44269504088896341f)));
  T r = V::fnmadd(n, V::set1(0.693359375f), clamped);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  T p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  const T y = V::add(V::fmadd(V::mul(p, r), r, r), V::set1(1.0f));
  return V::zero_below(x, lo, V::mul(y, V::pow2(n)));
}

#if defined(__AVX2__)
struct Avx2 {
  using T = __m256;
  static constexpr int W = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T zero() { return _mm256_setzero_ps(); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T round(T a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2(T n) {  // 2^n for integral n in [-126, 127]
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static T zero_below(T x, T limit, T y) {
    return _mm256_andnot_ps(_mm256_cmp_ps(x, limit, _CMP_LT_OQ), y);
  }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(T v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T exp(T x) { return exp_poly<Avx2>(x); }
  static T select_ge(T x, T limit, T a, T b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, limit, _CMP_GE_OQ));
  }
  static T lookup_half(const float* table, T x) {
    const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_i32gather_ps(table, _mm256_cvtepu16_epi32(h), 4);
  }
  static T load_bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  // fp32_to_bf16's integer rounding on 8 lanes (bits + 0x7fff + bit 16, shifted down; NaN
  // keeps its top bits with the quiet bit set)
  static void store_bf16(uint16_t* p, T v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    const __m256i words = _mm256_blendv_epi8(rounded, quiet, nan);  // 32-bit lanes < 2^16
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
};
#endif

#if defined(__AVX512F__)
struct Avx512 {
  using T = __m512;
  static constexpr int W = 16;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T zero() { return _mm512_setzero_ps(); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  static T round(T a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static T pow2(T n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static T zero_below(T x, T limit, T y) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_GE_OQ), y);
  }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  static float hmax(T v) { return _mm512_reduce_max_ps(v); }
  static T exp(T x) { return exp_poly<Avx512>(x); }
  static T select_ge(T x, T limit, T a, T b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, limit, _CMP_GE_OQ), b, a);
  }
  static T lookup_half(const float* table, T x) {
    const __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(h), table, 4);
  }
  static T load_bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // Integer rounding as fp32_to_bf16 (vcvtneps2bf16 would flush denormals to zero, which the
  // reference keeps): bits + 0x7fff + bit 16, shifted down; NaN keeps its top bits, made quiet.
  static void store_bf16(uint16_t* p, T v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet)));
  }
};
#endif

// U's vector at p, from float32 or from bfloat16 bits (a training layer's compact kept arrays).
template <class U>
inline typename U::T load_as(const float* p) { return U::load(p); }
template <class U>
inline typename U::T load_as(const uint16_t* p) { return U::load_bf16(p); }

// Calls body(U{}, i) for i = 0, W, 2W, ... with U = V while a full vector fits, then
// for each remaining index with U = Scalar. The body is a generic lambda over U.
template <class V, class Body>
inline void for_chunks(int64_t n, Body&& body) {
  int64_t i = 0;
  if constexpr (V::W > 1)
    for (; i + V::W <= n; i += V::W) body(V{}, i);
  for (; i < n; ++i) body(Scalar{}, i);
}

// sum over i of term(U{}, i) (a U::T), vector lanes and scalar tail added at the end.
template <class V, class Term>
inline float reduce_sum(int64_t n, Term&& term) {
  typename V::T vacc = V::zero();
  float tail = 0.0f;
  for_chunks<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    if constexpr (U::W == V::W) vacc = V::add(vacc, term(u, i));
    else tail += term(u, i);
  });
  return V::hsum(vacc) + tail;
}

// max over x[0, n), n >= 1.
template <class V>
inline float reduce_max(const float* x, int64_t n) {
  typename V::T vmax = V::set1(x[0]);
  float tail = x[0];
  for_chunks<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    if constexpr (U::W == V::W) vmax = V::max(vmax, V::load(x + i));
    else tail = tail > x[i] ? tail : x[i];
  });
  const float m = V::hmax(vmax);
  return m > tail ? m : tail;
}

// Small dense product, the building block of blocked attention:
//   c[m][n] = (accumulate ? c[m][n] : 0) + alpha * sum_k a[m*a_rs + k*a_ks] * b[k*ldb + n]
// a is read through two strides, so a transposed operand costs nothing; b and c are row-major.
// A register tile of R rows x NV vectors of c: each k loads NV vectors of b and R scalars
// of a for R*NV independent FMAs (enough chains in flight to hide the FMA latency).
template <class U, int R, int NV>
inline void gemm_tile(const float* a, int64_t a_rs, int64_t a_ks, const float* b, int64_t ldb,
                      int64_t K,
                      float* c, int64_t ldc, int64_t n, float alpha, bool accumulate) {
  typename U::T acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = U::zero();
  for (int64_t k = 0; k < K; ++k) {
    typename U::T bk[NV];
    for (int j = 0; j < NV; ++j) bk[j] = U::load(b + k * ldb + n + j * U::W);
    for (int r = 0; r < R; ++r) {
      const typename U::T ark = U::set1(a[r * a_rs + k * a_ks]);
      for (int j = 0; j < NV; ++j) acc[r][j] = U::fmadd(ark, bk[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) {
      float* out = c + r * ldc + n + j * U::W;
      const typename U::T scaled = U::mul(acc[r][j], U::set1(alpha));
      U::store(out, accumulate ? U::add(U::load(out), scaled) : scaled);
    }
}

// The rows [m, m + R) of gemm_block: two-vector tiles, then one-vector tiles, then the scalar tail.
template <class V, int R>
inline void gemm_row_group(int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_ks,
                           const float* b,
                           int64_t ldb, float* c, int64_t ldc, float alpha, bool accumulate) {
  int64_t n = 0;
  if constexpr (V::W > 1)
    for (; n + 2 * V::W <= N; n += 2 * V::W)
      gemm_tile<V, R, 2>(a, a_rs, a_ks, b, ldb, K, c, ldc, n, alpha, accumulate);
  for_chunks<V>(N - n, [&](auto u, int64_t j) {
    gemm_tile<decltype(u), R, 1>(a, a_rs, a_ks, b, ldb, K, c, ldc, n + j, alpha, accumulate);
  });
}

template <class V>
inline void gemm_block(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs,
                       int64_t a_ks, const float* b, int64_t ldb, float* c, int64_t ldc,
                       float alpha, bool accumulate) {
  // Rows per register tile: 8 x 2 accumulators fit AVX-512's 32 registers, 4 x 2 AVX2's 16.
  constexpr int kRows = V::W >= 16 ? 8 : 4;
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows)
    gemm_row_group<V, kRows>(N, K, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha,
                             accumulate);
  if constexpr (kRows > 4)
    for (; m + 4 <= M; m += 4)
      gemm_row_group<V, 4>(N, K, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha,
                             accumulate);
  for (; m < M; ++m)
    gemm_row_group<V, 1>(N, K, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha,
                             accumulate);
}

}  // namespace
}  // namespace ggtune::ops
