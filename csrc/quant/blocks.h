// GGUF quantization blocks, laid out byte for byte as ggml stores them (ggml-common.h),
// and exact conversions between float32 and the 16-bit float formats.
//
// A quantized row is a sequence of blocks; each block holds `block_size` weights as small
// integers plus the float16 scale (and minimum) that turn them back into floats.
// QK_K = 256 for the K-quants, whose blocks are split into 16 or 8 sub-blocks with 6- or
// 4-bit sub-scales of their own.
#pragma once

#include <cstdint>
#include <cstring>

namespace ggtune {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;
constexpr int QK8_0 = 32;
constexpr int QK8_1 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K

using half_bits = uint16_t;  // IEEE binary16, stored as its bits

// Byte-aligned: a row may start at any address (a numpy view, a GGUF tensor at any offset).
#pragma pack(push, 1)

// x = d * (q - 8)
struct BlockQ4_0 {
  half_bits d;
  uint8_t qs[QK4_0 / 2];  // element i in the low nibble of qs[i], element i+16 in the high one
};
// x = d * q + m
struct BlockQ4_1 {
  half_bits d;
  half_bits m;
  uint8_t qs[QK4_1 / 2];
};
// x = d * (q - 16), q = nibble | (bit i of qh) << 4
struct BlockQ5_0 {
  half_bits d;
  uint8_t qh[4];
  uint8_t qs[QK5_0 / 2];
};
// x = d * q + m
struct BlockQ5_1 {
  half_bits d;
  half_bits m;
  uint8_t qh[4];
  uint8_t qs[QK5_1 / 2];
};
// x = d * q
struct BlockQ8_0 {
  half_bits d;
  int8_t qs[QK8_0];
};
// x = d * q; s = d * sum(q) serves dot products only
struct BlockQ8_1 {
  half_bits d;
  half_bits s;
  int8_t qs[QK8_1];
};
// 16 sub-blocks of 16: x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4), q 2 bits
struct BlockQ2_K {
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  half_bits d;
  half_bits dmin;
};
// 16 sub-blocks of 16: x = d * (scale6[j] - 32) * (q2 - (high bit clear ? 4 : 0))
struct BlockQ3_K {
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];
  half_bits d;
};
// 8 sub-blocks of 32: x = d * scale6[j] * q - dmin * min6[j], q 4 bits
struct BlockQ4_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qs[QK_K / 2];
};
// as Q4_K with a fifth bit per weight in qh
struct BlockQ5_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
// 16 sub-blocks of 16: x = d * scales[j] * (q - 32), q 6 bits (4 in ql, 2 in qh)
struct BlockQ6_K {
  uint8_t ql[QK_K / 2];
  uint8_t qh[QK_K / 4];
  int8_t scales[QK_K / 16];
  half_bits d;
};
#pragma pack(pop)

// Q4_K / Q5_K sub-block k in 0..7: 6-bit scale and min. k < 4: low 6 bits of bytes k and
// k + 4; k >= 4: a nibble of byte k + 4 below the top 2 bits of bytes k - 4 and k.
inline void k_scale_min(const uint8_t* scales, int k, int* sc, int* mn) {
  if (k < 4) {
    *sc = scales[k] & 0x3f;
    *mn = scales[k + 4] & 0x3f;
  } else {
    *sc = (scales[k + 4] & 0x0f) | ((scales[k - 4] >> 6) << 4);
    *mn = (scales[k + 4] >> 4) | ((scales[k] >> 6) << 4);
  }
}

// Q3_K sub-scale k (6 bits, offset 32): low 4 bits in scales[k % 8] (nibble k / 8),
// high 2 bits in scales[8 + k % 4] (bits 2 (k / 4)).
inline int q3_k_scale(const uint8_t* scales, int k) {
  const int lo = (scales[k % 8] >> (4 * (k / 8))) & 0x0f;
  const int hi = (scales[8 + k % 4] >> (2 * (k / 4))) & 0x03;
  return (lo | hi << 4) - 32;
}

static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block size");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block size");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block size");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block size");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block size");
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 block size");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block size");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block size");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block size");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block size");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block size");

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Exact (every binary16 value, NaN payloads included, has one binary32 image). Written as
// selects rather than early returns so that compilers vectorize loops over it.
inline float fp16_to_fp32(half_bits h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t magnitude = uint32_t(h & 0x7fffu) << 13;  // exponent and mantissa in place
  const uint32_t exponent = magnitude & 0x0f800000u;
  // zero and subnormals: mantissa * 2^-24 is exact in binary32
  const uint32_t tiny = float_bits(float(magnitude >> 13) * 0x1p-24f);
  const uint32_t bits = exponent == 0x0f800000u ? magnitude + (224u << 23)  // inf, NaN: 31 -> 255
                        : exponent != 0         ? magnitude + (112u << 23)  // normal: 15 -> 127
                                                : tiny;
  return bits_float(sign | bits);
}

// Round to nearest, ties to even; overflow gives inf; NaN stays NaN (quiet).
inline half_bits fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return half_bits(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) return half_bits(sign | 0x7c00u);  // >= 65520 rounds past 65504
  if (ax < 0x38800000u) {
    // below 2^-14 the result is subnormal: adding 0.5 lines its units (2^-24) up with the
    // binary32 ulp at 0.5, so the FPU does the rounding
    return half_bits(sign | (float_bits(bits_float(ax) + 0.5f) - 0x3f000000u));
  }
  const uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + odd;  // rebias exponent 127 -> 15, round half to even
  return half_bits(sign | (ax >> 13));
}

// Q5_0 / Q5_1 fifth bits: qh read as a little-endian 32-bit word, bit i for element i.
inline uint32_t load_qh(const uint8_t* qh) {
  return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

// The i-th 16-bit value of a possibly unaligned array.
inline uint16_t load_u16(const void* p, int64_t i) {
  uint16_t v;
  std::memcpy(&v, static_cast<const uint8_t*>(p) + 2 * i, sizeof v);
  return v;
}

inline float bf16_to_fp32(uint16_t b) { return bits_float(uint32_t(b) << 16); }

// Round to nearest, ties to even; NaN stays NaN (quiet), as ggml_compute_fp32_to_bf16.
inline uint16_t fp32_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace ggtune
