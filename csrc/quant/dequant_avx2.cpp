// AVX2 + F16C dequantization, 8 floats per vector. Bit-exact with the scalar reference:
// integers are converted exactly, then the same float32 multiplies and adds in the same
// order. Types without a kernel here fall back to the scalar reference.
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/dequant.h"

namespace ggtune {
namespace {

// 16 signed bytes -> two vectors of 8 floats, stored at y[0..15] after scaling by d.
inline void store_scaled_i8x16(__m128i q, __m256 d, float* y) {
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
  _mm256_storeu_ps(y, _mm256_mul_ps(lo, d));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(hi, d));
}

// 16 unsigned bytes -> y[0..15] = d * q + m (Q4_1), or d * q - m when `subtract` (K-quants).
template <bool subtract>
inline void store_affine_u8x16(__m128i q, __m256 d, __m256 m, float* y) {
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
  if (subtract) {
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(lo, d), m));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(hi, d), m));
  } else {
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(lo, d), m));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(hi, d), m));
  }
}

inline __m128i low_nibbles(__m128i q) { return _mm_and_si128(q, _mm_set1_epi8(0x0f)); }
inline __m128i high_nibbles(__m128i q) {
  return _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0f));
}

// F16C quiets signalling NaNs; numpy (and the scalar reference) keep them signalling.
// h: 8 halves widened to 32 bits; clears the quiet bit the conversion set.
inline __m256 keep_signalling_nans(__m256 y, __m256i h) {
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi32(0x7fff));
  const __m256i signalling = _mm256_and_si256(_mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7c00)),
                                              _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7e00), magnitude));
  const __m256i quiet_bit = _mm256_and_si256(signalling, _mm256_set1_epi32(0x00400000));
  return _mm256_castsi256_ps(_mm256_andnot_si256(quiet_bit, _mm256_castps_si256(y)));
}

void f16_row(const half_bits* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    _mm256_storeu_ps(y + i, keep_signalling_nans(_mm256_cvtph_ps(h), _mm256_cvtepu16_epi32(h)));
  }
  for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void bf16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_slli_epi32(b, 16));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void q4_0_row(const BlockQ4_0* b, float* y, int64_t n_blocks) {
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_0) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b[i].d));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    store_scaled_i8x16(_mm_sub_epi8(low_nibbles(q), eight), d, y);
    store_scaled_i8x16(_mm_sub_epi8(high_nibbles(q), eight), d, y + 16);
  }
}

void q4_1_row(const BlockQ4_1* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_1) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b[i].d));
    const __m256 m = _mm256_set1_ps(fp16_to_fp32(b[i].m));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    store_affine_u8x16<false>(low_nibbles(q), d, m, y);
    store_affine_u8x16<false>(high_nibbles(q), d, m, y + 16);
  }
}

void q8_0_row(const BlockQ8_0* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK8_0) {
    const __m256 d = _mm256_set1_ps(fp16_to_fp32(b[i].d));
    store_scaled_i8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs)), d, y);
    store_scaled_i8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16)), d, y + 16);
  }
}

// Sub-block k of 32: nibble k % 2 of qs[32 (k / 2) + l].
void q4_k_row(const BlockQ4_K* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    for (int k = 0; k < QK_K / 32; ++k, y += 32) {
      int sc, mn;
      k_scale_min(b[i].scales, k, &sc, &mn);
      const __m256 dl = _mm256_set1_ps(d * float(sc)), ml = _mm256_set1_ps(dmin * float(mn));
      for (int half = 0; half < 2; ++half) {
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 32 * (k / 2) + 16 * half));
        store_affine_u8x16<true>(k % 2 ? high_nibbles(q) : low_nibbles(q), dl, ml, y + 16 * half);
      }
    }
  }
}

// Element 128 h + 32 s + l: nibble s / 2 of ql[64 h + 32 (s % 2) + l], bits 2s of
// qh[32 h + l]; each run of 16 shares scales[(128 h + 32 s + l) / 16].
void q6_k_row(const BlockQ6_K* b, float* y, int64_t n_blocks) {
  const __m128i three = _mm_set1_epi8(3), thirty_two = _mm_set1_epi8(32);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < QK_K; j += 16, y += 16) {
      const int h = j / 128, s = (j % 128) / 32, l = j % 32;
      const __m128i ql = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].ql + 64 * h + 32 * (s % 2) + l));
      const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qh + 32 * h + l));
      const __m128i low = s / 2 ? high_nibbles(ql) : low_nibbles(ql);
      const __m128i high = _mm_and_si128(_mm_srl_epi16(qh, _mm_cvtsi32_si128(2 * s)), three);
      const __m128i q = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), thirty_two);
      store_scaled_i8x16(q, _mm256_set1_ps(d * float(b[i].scales[j / 16])), y);
    }
  }
}

}  // namespace

bool dequantize_row_avx2(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F16: f16_row(static_cast<const half_bits*>(src), dst, n); return true;
    case GgmlType::BF16: bf16_row(static_cast<const uint16_t*>(src), dst, n); return true;
    case GgmlType::Q4_0: q4_0_row(static_cast<const BlockQ4_0*>(src), dst, n / QK4_0); return true;
    case GgmlType::Q4_1: q4_1_row(static_cast<const BlockQ4_1*>(src), dst, n / QK4_1); return true;
    case GgmlType::Q8_0: q8_0_row(static_cast<const BlockQ8_0*>(src), dst, n / QK8_0); return true;
    case GgmlType::Q4_K: q4_k_row(static_cast<const BlockQ4_K*>(src), dst, n / QK_K); return true;
    case GgmlType::Q6_K: q6_k_row(static_cast<const BlockQ6_K*>(src), dst, n / QK_K); return true;
    default: return false;
  }
}

}  // namespace ggtune
