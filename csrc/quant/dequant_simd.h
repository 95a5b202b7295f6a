// Block loops shared by the SIMD tiers (dequant_avx2.cpp, dequant_avx512.cpp).
//
// Every quantized type is decoded 16 quants at a time in one 128-bit register of bytes
// (SSE2/SSSE3, present in every x86-64 tier); a tier supplies `V`, which turns those 16
// bytes into floats at its own vector width:
//   V::scaled(q, d, y)       q: 16 int8   -> y[0..15] = float(q) * d
//   V::affine_add(q, d, m, y) q: 16 uint8 -> y[0..15] = d * float(q) + m
//   V::affine_sub(q, d, m, y) q: 16 uint8 -> y[0..15] = d * float(q) - m
//   V::bit_bytes(bits)       16 bits      -> byte l = 0xff where bit l is set, else 0
// The float operations are the scalar reference's, in the same order, so results are
// bit-exact with it. Internal linkage (anonymous namespace) keeps each tier's copy compiled
// with its own instruction set.
#pragma once

#include <immintrin.h>

#include "quant/blocks.h"
#include "quant/dequant.h"

namespace ggtune {
namespace {

// A block's float16 scale or minimum. F16C converts it in one instruction; it differs from
// the exact fp16_to_fp32 only by quieting a signalling NaN, which every scale's first multiply
// or add would quiet anyway, so the decoded weights keep the same bits.
inline float scale_of(half_bits h) { return _cvtsh_ss(h); }

inline __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m128i low_nibbles(__m128i q) { return _mm_and_si128(q, _mm_set1_epi8(0x0f)); }
inline __m128i high_nibbles(__m128i q) { return low_nibbles(_mm_srli_epi16(q, 4)); }
// Bits `shift`.. of each byte, `width_mask` wide (shift <= 7).
inline __m128i byte_bits(__m128i q, int shift, int width_mask) {
  return _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(shift)), _mm_set1_epi8(char(width_mask)));
}
inline __m128i shl4(__m128i q) { return _mm_slli_epi16(q, 4); }  // bytes < 16 only

template <class V>
void q4_0_row(const BlockQ4_0* b, float* y, int64_t n_blocks) {
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_0) {
    const float d = scale_of(b[i].d);
    const __m128i q = load16(b[i].qs);
    V::scaled(_mm_sub_epi8(low_nibbles(q), eight), d, y);
    V::scaled(_mm_sub_epi8(high_nibbles(q), eight), d, y + 16);
  }
}

template <class V>
void q4_1_row(const BlockQ4_1* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK4_1) {
    const float d = scale_of(b[i].d), m = scale_of(b[i].m);
    const __m128i q = load16(b[i].qs);
    V::affine_add(low_nibbles(q), d, m, y);
    V::affine_add(high_nibbles(q), d, m, y + 16);
  }
}

// Q5: bit l of the 32-bit qh is bit 4 of element l.
template <class V>
__m128i fifth_bits(uint32_t qh, int half) {
  return _mm_and_si128(V::bit_bytes(uint16_t(qh >> (16 * half))), _mm_set1_epi8(0x10));
}

template <class V>
void q5_0_row(const BlockQ5_0* b, float* y, int64_t n_blocks) {
  const __m128i sixteen = _mm_set1_epi8(16);
  for (int64_t i = 0; i < n_blocks; ++i, y += QK5_0) {
    const float d = scale_of(b[i].d);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, sizeof qh);
    const __m128i q = load16(b[i].qs);
    V::scaled(_mm_sub_epi8(_mm_or_si128(low_nibbles(q), fifth_bits<V>(qh, 0)), sixteen), d, y);
    V::scaled(_mm_sub_epi8(_mm_or_si128(high_nibbles(q), fifth_bits<V>(qh, 1)), sixteen), d, y + 16);
  }
}

template <class V>
void q5_1_row(const BlockQ5_1* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK5_1) {
    const float d = scale_of(b[i].d), m = scale_of(b[i].m);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, sizeof qh);
    const __m128i q = load16(b[i].qs);
    V::affine_add(_mm_or_si128(low_nibbles(q), fifth_bits<V>(qh, 0)), d, m, y);
    V::affine_add(_mm_or_si128(high_nibbles(q), fifth_bits<V>(qh, 1)), d, m, y + 16);
  }
}

template <class V>
void q8_0_row(const BlockQ8_0* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK8_0) {
    const float d = scale_of(b[i].d);
    V::scaled(load16(b[i].qs), d, y);
    V::scaled(load16(b[i].qs + 16), d, y + 16);
  }
}

template <class V>
void q8_1_row(const BlockQ8_1* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i, y += QK8_1) {
    const float d = scale_of(b[i].d);
    V::scaled(load16(b[i].qs), d, y);
    V::scaled(load16(b[i].qs + 16), d, y + 16);
  }
}

// The 2-bit K-quants walk element j = 128 h + 32 s + 16 half + l: bits 2s of
// qs[32 h + 16 half + l], sub-block j / 16 = 8 h + 2 s + half.
template <class V>
void q2_k_row(const BlockQ2_K* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = scale_of(b[i].d), dmin = scale_of(b[i].dmin);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int half = 0; half < 2; ++half, y += 16) {
          const uint8_t sc = b[i].scales[8 * h + 2 * s + half];
          const __m128i q = byte_bits(load16(b[i].qs + 32 * h + 16 * half), 2 * s, 3);
          V::affine_sub(q, d * float(sc & 0x0f), dmin * float(sc >> 4), y);
        }
      }
    }
  }
}

// Q3_K: Q2_K's two bits, minus 4 where bit 4 h + s of hmask[16 half + l] is clear.
template <class V>
void q3_k_row(const BlockQ3_K* b, float* y, int64_t n_blocks) {
  const __m128i four = _mm_set1_epi8(4);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = scale_of(b[i].d);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int half = 0; half < 2; ++half, y += 16) {
          const __m128i low = byte_bits(load16(b[i].qs + 32 * h + 16 * half), 2 * s, 3);
          const __m128i high = byte_bits(load16(b[i].hmask + 16 * half), 4 * h + s, 1);
          const __m128i q = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 2)), four);
          V::scaled(q, d * float(q3_k_scale(b[i].scales, 8 * h + 2 * s + half)), y);
        }
      }
    }
  }
}

// Q4_K / Q5_K sub-block k of 32: nibble k % 2 of qs[32 (k / 2) + l] (Q5_K: bit k of qh[l]
// above it).
template <class V>
void q4_k_row(const BlockQ4_K* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = scale_of(b[i].d), dmin = scale_of(b[i].dmin);
    for (int k = 0; k < QK_K / 32; ++k) {
      int sc, mn;
      k_scale_min(b[i].scales, k, &sc, &mn);
      const float dl = d * float(sc), ml = dmin * float(mn);
      for (int half = 0; half < 2; ++half, y += 16) {
        const __m128i q = byte_bits(load16(b[i].qs + 32 * (k / 2) + 16 * half), 4 * (k % 2), 0x0f);
        V::affine_sub(q, dl, ml, y);
      }
    }
  }
}

template <class V>
void q5_k_row(const BlockQ5_K* b, float* y, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = scale_of(b[i].d), dmin = scale_of(b[i].dmin);
    for (int k = 0; k < QK_K / 32; ++k) {
      int sc, mn;
      k_scale_min(b[i].scales, k, &sc, &mn);
      const float dl = d * float(sc), ml = dmin * float(mn);
      for (int half = 0; half < 2; ++half, y += 16) {
        const __m128i low = byte_bits(load16(b[i].qs + 32 * (k / 2) + 16 * half), 4 * (k % 2), 0x0f);
        const __m128i high = byte_bits(load16(b[i].qh + 16 * half), k, 1);
        V::affine_sub(_mm_or_si128(low, shl4(high)), dl, ml, y);
      }
    }
  }
}

// Q6_K element 128 h + 32 s + 16 half + l: nibble s / 2 of ql[64 h + 32 (s % 2) + 16 half + l],
// bits 2s of qh[32 h + 16 half + l]; sub-block 8 h + 2 s + half.
template <class V>
void q6_k_row(const BlockQ6_K* b, float* y, int64_t n_blocks) {
  const __m128i thirty_two = _mm_set1_epi8(32);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const float d = scale_of(b[i].d);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int half = 0; half < 2; ++half, y += 16) {
          const __m128i ql = load16(b[i].ql + 64 * h + 32 * (s % 2) + 16 * half);
          const __m128i low = byte_bits(ql, 4 * (s / 2), 0x0f);
          const __m128i high = byte_bits(load16(b[i].qh + 32 * h + 16 * half), 2 * s, 3);
          const __m128i q = _mm_sub_epi8(_mm_or_si128(low, shl4(high)), thirty_two);
          V::scaled(q, d * float(b[i].scales[8 * h + 2 * s + half]), y);
        }
      }
    }
  }
}

// Every block type; false for the float types (each tier converts those itself).
template <class V>
bool dequantize_blocks(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::Q4_0: q4_0_row<V>(static_cast<const BlockQ4_0*>(src), dst, n / QK4_0); return true;
    case GgmlType::Q4_1: q4_1_row<V>(static_cast<const BlockQ4_1*>(src), dst, n / QK4_1); return true;
    case GgmlType::Q5_0: q5_0_row<V>(static_cast<const BlockQ5_0*>(src), dst, n / QK5_0); return true;
    case GgmlType::Q5_1: q5_1_row<V>(static_cast<const BlockQ5_1*>(src), dst, n / QK5_1); return true;
    case GgmlType::Q8_0: q8_0_row<V>(static_cast<const BlockQ8_0*>(src), dst, n / QK8_0); return true;
    case GgmlType::Q8_1: q8_1_row<V>(static_cast<const BlockQ8_1*>(src), dst, n / QK8_1); return true;
    case GgmlType::Q2_K: q2_k_row<V>(static_cast<const BlockQ2_K*>(src), dst, n / QK_K); return true;
    case GgmlType::Q3_K: q3_k_row<V>(static_cast<const BlockQ3_K*>(src), dst, n / QK_K); return true;
    case GgmlType::Q4_K: q4_k_row<V>(static_cast<const BlockQ4_K*>(src), dst, n / QK_K); return true;
    case GgmlType::Q5_K: q5_k_row<V>(static_cast<const BlockQ5_K*>(src), dst, n / QK_K); return true;
    case GgmlType::Q6_K: q6_k_row<V>(static_cast<const BlockQ6_K*>(src), dst, n / QK_K); return true;
    default: return false;
  }
}

}  // namespace
}  // namespace ggtune
