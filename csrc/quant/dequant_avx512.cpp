// AVX-512 dequantization, 16 floats per vector. The block loops are shared with the AVX2
// tier (dequant_simd.h); this file supplies the 16-wide conversions.
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant/dequant_simd.h"

namespace ggtune {
namespace {

struct Avx512 {
  static __m512 from_i8(__m128i q) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)); }
  static __m512 from_u8(__m128i q) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q)); }

  static void scaled(__m128i q, float d, float* y) {
    _mm512_storeu_ps(y, _mm512_mul_ps(from_i8(q), _mm512_set1_ps(d)));
  }
  static void affine_add(__m128i q, float d, float m, float* y) {
    const __m512 dq = _mm512_mul_ps(_mm512_set1_ps(d), from_u8(q));
    _mm512_storeu_ps(y, _mm512_add_ps(dq, _mm512_set1_ps(m)));
  }
  static void affine_sub(__m128i q, float d, float m, float* y) {
    const __m512 dq = _mm512_mul_ps(_mm512_set1_ps(d), from_u8(q));
    _mm512_storeu_ps(y, _mm512_sub_ps(dq, _mm512_set1_ps(m)));
  }
  static __m128i bit_bytes(uint16_t bits) { return _mm_movm_epi8(__mmask16(bits)); }
};

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The conversion quiets signalling NaNs; numpy (and the scalar reference) keep them
// signalling, so the quiet bit is cleared again where the input was one.
__m512 f16x16_to_f32(__m256i h) {
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi16(0x7fff));
  const __mmask16 signalling = _mm256_cmpgt_epi16_mask(magnitude, _mm256_set1_epi16(0x7c00)) &
                               _mm256_cmplt_epi16_mask(magnitude, _mm256_set1_epi16(0x7e00));
  const __m512i y = _mm512_castps_si512(_mm512_cvtph_ps(h));
  const __m512i quiet_bit = _mm512_set1_epi32(0x00400000);
  return _mm512_castsi512_ps(_mm512_mask_andnot_epi32(y, signalling, quiet_bit, y));
}

void f16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, f16x16_to_f32(load32(x + i)));
  for (; i < n; ++i) y[i] = fp16_to_fp32(load_u16(x, i));
}

void bf16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_si512(y + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(load32(x + i)), 16));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(load_u16(x, i));
}

}  // namespace

bool dequantize_row_avx512(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F16: f16_row(static_cast<const uint16_t*>(src), dst, n); return true;
    case GgmlType::BF16: bf16_row(static_cast<const uint16_t*>(src), dst, n); return true;
    default: return dequantize_blocks<Avx512>(type, src, dst, n);
  }
}

}  // namespace ggtune
