// AVX-512 dequantization, 16 floats per vector. Bit-exact with the scalar reference:
// integers are converted exactly, then the same float32 multiplies and adds in the same
// order. Types without a kernel here fall back to the scalar reference.
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/dequant.h"

namespace ggtune {
namespace {

inline __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 signed bytes -> y[0..15] = float(q) * d.
inline void store_scaled_i8x16(__m128i q, __m512 d, float* y) {
  _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
}

// 16 unsigned bytes -> y[0..15] = d * q + m (Q4_1), or d * q - m when `subtract` (K-quants).
template <bool subtract>
inline void store_affine_u8x16(__m128i q, __m512 d, __m512 m, float* y) {
  const __m512 dq = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)), d);
  _mm512_storeu_ps(y, subtract ? _mm512_sub_ps(dq, m) : _mm512_add_ps(dq, m));
}

inline __m128i low_nibbles(__m128i q) { return _mm_and_si128(q, _mm_set1_epi8(0x0f)); }
inline __m128i high_nibbles(__m128i q) {
  return _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0f));
}

// The conversion quiets signalling NaNs; numpy (and the scalar reference) keep them
// signalling, so the quiet bit is cleared again where the input was one.
inline __m512 f16x16_to_f32(__m256i h) {
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi16(0x7fff));
  const __mmask16 signalling = _mm256_cmpgt_epi16_mask(magnitude, _mm256_set1_epi16(0x7c00)) &
                               _mm256_cmplt_epi16_mask(magnitude, _mm256_set1_epi16(0x7e00));
  const __m512i y = _mm512_castps_si512(_mm512_cvtph_ps(h));
  return _mm512_castsi512_ps(
      _mm512_mask_andnot_epi32(y, signalling, _mm512_set1_epi32(0x00400000), y));
}

void f16_row(const half_bits* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, f16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
  for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void bf16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_si512(y + i, _mm512_slli_epi32(b, 16));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}

void q4_0_row(const BlockQ4_0* b, float* y, int64_t n_blocks) {
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_0) {
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
    const __m128i q = load16(b[i].qs);
    store_scaled_i8x16(_mm_sub_epi8(low_nibbles(q), eight), d, y);
    store_scaled_i8x16(_mm_sub_epi8(high_nibbles(q), eight), d, y + 16);
  }
}

void q4_1_row(const BlockQ4_1* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_1) {
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
    const __m512 m = _mm512_set1_ps(fp16_to_fp32(b[i].m));
    const __m128i q = load16(b[i].qs);
    store_affine_u8x16<false>(low_nibbles(q), d, m, y);
    store_affine_u8x16<false>(high_nibbles(q), d, m, y + 16);
  }
}

void q8_0_row(const BlockQ8_0* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK8_0) {
    const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
    store_scaled_i8x16(load16(b[i].qs), d, y);
    store_scaled_i8x16(load16(b[i].qs + 16), d, y + 16);
  }
}

// Sub-block k of 32: nibble k % 2 of qs[32 (k / 2) + l].
void q4_k_row(const BlockQ4_K* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
    for (int k = 0; k < QK_K / 32; ++k, y += 32) {
      int sc, mn;
      k_scale_min(b[i].scales, k, &sc, &mn);
      const __m512 dl = _mm512_set1_ps(d * float(sc)), ml = _mm512_set1_ps(dmin * float(mn));
      for (int half = 0; half < 2; ++half) {
        const __m128i q = load16(b[i].qs + 32 * (k / 2) + 16 * half);
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
      const __m128i ql = load16(b[i].ql + 64 * h + 32 * (s % 2) + l);
      const __m128i qh = load16(b[i].qh + 32 * h + l);
      const __m128i low = s / 2 ? high_nibbles(ql) : low_nibbles(ql);
      const __m128i high = _mm_and_si128(_mm_srl_epi16(qh, _mm_cvtsi32_si128(2 * s)), three);
      const __m128i q = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), thirty_two);
      store_scaled_i8x16(q, _mm512_set1_ps(d * float(b[i].scales[j / 16])), y);
    }
  }
}

}  // namespace

bool dequantize_row_avx512(GgmlType type, const void* src, float* dst, int64_t n) {
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
