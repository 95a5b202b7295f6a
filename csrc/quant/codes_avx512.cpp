// AVX-512 unpacking of the 32-blocks to u8 codes (codes.h): nibbles split with two masks,
// Q5's fifth bits expanded from qh with a byte mask, Q8_0 shifted by 128 with one xor.
#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/codes.h"

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

inline void store32(uint8_t* u, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(u), v); }

template <class Block, class Fn>
void each(const void* src, int64_t n, Fn fn) {
  const auto* blocks = static_cast<const Block*>(src);
  for (int64_t b = 0; b < n / 32; ++b) fn(blocks[b], b);
}

}  // namespace

bool unpack_row_u8_avx512(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c) {
  switch (type) {
    case GgmlType::Q4_0:
      each<BlockQ4_0>(src, n, [&](const BlockQ4_0& blk, int64_t b) {
        store32(u + 32 * b, nibble_codes(blk.qs));
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -8.0f * d[b];
      });
      return true;
    case GgmlType::Q4_1:
      each<BlockQ4_1>(src, n, [&](const BlockQ4_1& blk, int64_t b) {
        store32(u + 32 * b, nibble_codes(blk.qs));
        d[b] = fp16_to_fp32(blk.d);
        c[b] = fp16_to_fp32(blk.m);
      });
      return true;
    case GgmlType::Q5_0:
      each<BlockQ5_0>(src, n, [&](const BlockQ5_0& blk, int64_t b) {
        store32(u + 32 * b, _mm256_or_si256(nibble_codes(blk.qs), fifth_bits(blk.qh)));
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -16.0f * d[b];
      });
      return true;
    case GgmlType::Q5_1:
      each<BlockQ5_1>(src, n, [&](const BlockQ5_1& blk, int64_t b) {
        store32(u + 32 * b, _mm256_or_si256(nibble_codes(blk.qs), fifth_bits(blk.qh)));
        d[b] = fp16_to_fp32(blk.d);
        c[b] = fp16_to_fp32(blk.m);
      });
      return true;
    case GgmlType::Q8_0:
      each<BlockQ8_0>(src, n, [&](const BlockQ8_0& blk, int64_t b) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs));
        store32(u + 32 * b, _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80))));  // q + 128
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -128.0f * d[b];
      });
      return true;
    default:
      return false;
  }
}

}  // namespace ggtune
