// AVX-512 decoding of one 32-block into its u8 codes (codes.h) held in a register, for the
// avx512 translation units only: unpack_row_u8_avx512 stores them, the int8 matrix-vector
// kernel (gemm/qgemv_avx512.cpp) multiplies them in place. Internal linkage, like
// dequant_simd.h, so each includer compiles its own copy with its own flags.
#pragma once

#include <immintrin.h>

#include "quant/blocks.h"

namespace ggtune {
namespace {

// 16 bytes of nibbles -> 32 codes: low nibbles (elements 0..15), then high (16..31).
inline __m256i nibble_codes(const uint8_t* qs) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i low = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
}

// Bit i of qh (little-endian 32 bits) as 16 in byte i.
inline __m256i fifth_bits(const uint8_t* qh) {
  return _mm256_and_si256(_mm256_movm_epi8(load_qh(qh)), _mm256_set1_epi8(0x10));
}

// A block's float16 scale or offset: F16C, exact except that a signalling NaN comes out quiet.
inline float half_of(half_bits h) { return _cvtsh_ss(h); }

// The 32 codes u of a block, with x = d * u + c.
inline __m256i block_codes(const BlockQ4_0& b, float* d, float* c) {
  *d = half_of(b.d);
  *c = -8.0f * *d;
  return nibble_codes(b.qs);
}
inline __m256i block_codes(const BlockQ4_1& b, float* d, float* c) {
  *d = half_of(b.d);
  *c = half_of(b.m);
  return nibble_codes(b.qs);
}
inline __m256i block_codes(const BlockQ5_0& b, float* d, float* c) {
  *d = half_of(b.d);
  *c = -16.0f * *d;
  return _mm256_or_si256(nibble_codes(b.qs), fifth_bits(b.qh));
}
inline __m256i block_codes(const BlockQ5_1& b, float* d, float* c) {
  *d = half_of(b.d);
  *c = half_of(b.m);
  return _mm256_or_si256(nibble_codes(b.qs), fifth_bits(b.qh));
}
inline __m256i block_codes(const BlockQ8_0& b, float* d, float* c) {
  *d = half_of(b.d);
  *c = -128.0f * *d;
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
  return _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80)));  // q + 128
}

}  // namespace
}  // namespace ggtune
