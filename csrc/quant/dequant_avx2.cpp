// AVX2 + F16C dequantization, 8 floats per vector. The block loops are shared with the
// AVX-512 tier (dequant_simd.h); this file supplies the 8-wide conversions.
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant/dequant_simd.h"

namespace ggtune {
namespace {

struct Avx2 {
  static __m256 lo8_i8(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }
  static __m256 hi8_i8(__m128i q) { return lo8_i8(_mm_srli_si128(q, 8)); }
  static __m256 lo8_u8(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)); }
  static __m256 hi8_u8(__m128i q) { return lo8_u8(_mm_srli_si128(q, 8)); }

  static void scaled(__m128i q, float d, float* y) {
    const __m256 vd = _mm256_set1_ps(d);
    _mm256_storeu_ps(y, _mm256_mul_ps(lo8_i8(q), vd));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(hi8_i8(q), vd));
  }
  static void affine_add(__m128i q, float d, float m, float* y) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(vd, lo8_u8(q)), vm));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(vd, hi8_u8(q)), vm));
  }
  static void affine_sub(__m128i q, float d, float m, float* y) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(vd, lo8_u8(q)), vm));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(vd, hi8_u8(q)), vm));
  }
  // Byte l takes byte l / 8 of `bits`, then keeps only its bit l % 8.
  static __m128i bit_bytes(uint16_t bits) {
    const __m128i byte_index = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m128i spread = _mm_shuffle_epi8(_mm_set1_epi16(short(bits)), byte_index);
    const __m128i select = _mm_set1_epi64x(0x8040201008040201);  // bit l % 8 of byte l
    return _mm_cmpeq_epi8(_mm_and_si128(spread, select), select);
  }
};

// F16C quiets signalling NaNs; numpy (and the scalar reference) keep them signalling.
// h: 8 halves widened to 32 bits; clears the quiet bit the conversion set.
__m256 keep_signalling_nans(__m256 y, __m256i h) {
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi32(0x7fff));
  const __m256i above_inf = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7c00));
  const __m256i below_quiet = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7e00), magnitude);
  const __m256i signalling = _mm256_and_si256(above_inf, below_quiet);
  const __m256i quiet_bit = _mm256_and_si256(signalling, _mm256_set1_epi32(0x00400000));
  return _mm256_castsi256_ps(_mm256_andnot_si256(quiet_bit, _mm256_castps_si256(y)));
}

void f16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = load16(x + i);
    _mm256_storeu_ps(y + i, keep_signalling_nans(_mm256_cvtph_ps(h), _mm256_cvtepu16_epi32(h)));
  }
  for (; i < n; ++i) y[i] = fp16_to_fp32(load_u16(x, i));
}

void bf16_row(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_cvtepu16_epi32(load16(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), _mm256_slli_epi32(b, 16));
  }
  for (; i < n; ++i) y[i] = bf16_to_fp32(load_u16(x, i));
}

}  // namespace

bool dequantize_row_avx2(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F16: f16_row(static_cast<const uint16_t*>(src), dst, n); return true;
    case GgmlType::BF16: bf16_row(static_cast<const uint16_t*>(src), dst, n); return true;
    default: return dequantize_blocks<Avx2>(type, src, dst, n);
  }
}

}  // namespace ggtune
