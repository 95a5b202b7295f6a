// Scalar reference dequantization and the tier dispatch.
//
// Each formula is written in the order gguf.quants evaluates it in float32 numpy arithmetic,
// which makes the results bit-identical to it. Every product is exact: a float16 scale has 11
// significant bits, sub-scales at most 8 and quants at most 8, never more than 24 together,
// and no product leaves float32's normal range. So at most the final add of `d * q + m` rounds,
// and a compiler fusing it into an FMA (or a SIMD variant using one) cannot change a bit.
// Element order inside a block follows ggml's packing, described on each function.
#include "quant/dequant.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "dispatch.h"
#include "quant/blocks.h"

namespace ggtune {
namespace {

void f32_row(const void* x, float* y, int64_t n) { std::memcpy(y, x, n * sizeof(float)); }

void f16_row(const void* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(load_u16(x, i));
}

void bf16_row(const void* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(load_u16(x, i));
}

// Q4_0 / Q4_1: element i in the low nibble of qs[i], element i + 16 in the high nibble.
void q4_0_block(const BlockQ4_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < QK4_0 / 2; ++i) {
    y[i] = d * float((b.qs[i] & 0x0f) - 8);
    y[i + QK4_0 / 2] = d * float((b.qs[i] >> 4) - 8);
  }
}

void q4_1_block(const BlockQ4_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  for (int i = 0; i < QK4_1 / 2; ++i) {
    y[i] = d * float(b.qs[i] & 0x0f) + m;
    y[i + QK4_1 / 2] = d * float(b.qs[i] >> 4) + m;
  }
}

// Q5_0 / Q5_1: as Q4, plus bit i of the little-endian 32-bit qh as bit 4 of element i.
void q5_0_block(const BlockQ5_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  const uint32_t qh = load_qh(b.qh);
  for (int i = 0; i < QK5_0 / 2; ++i) {
    const int lo = (b.qs[i] & 0x0f) | ((qh >> i) & 1) << 4;
    const int hi = (b.qs[i] >> 4) | ((qh >> (i + QK5_0 / 2)) & 1) << 4;
    y[i] = d * float(lo - 16);
    y[i + QK5_0 / 2] = d * float(hi - 16);
  }
}

void q5_1_block(const BlockQ5_1& b, float* y) {
  const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
  const uint32_t qh = load_qh(b.qh);
  for (int i = 0; i < QK5_1 / 2; ++i) {
    const int lo = (b.qs[i] & 0x0f) | ((qh >> i) & 1) << 4;
    const int hi = (b.qs[i] >> 4) | ((qh >> (i + QK5_1 / 2)) & 1) << 4;
    y[i] = d * float(lo) + m;
    y[i + QK5_1 / 2] = d * float(hi) + m;
  }
}

void q8_0_block(const BlockQ8_0& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < QK8_0; ++i) y[i] = float(b.qs[i]) * d;
}

void q8_1_block(const BlockQ8_1& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int i = 0; i < QK8_1; ++i) y[i] = float(b.qs[i]) * d;
}

// Q2_K: element j = 128 h + 32 s + l holds bits 2s..2s+1 of qs[32 h + l]; sub-block j / 16.
void q2_k_block(const BlockQ2_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int half = 0; half < 2; ++half, y += 16) {
        const uint8_t sc = b.scales[8 * h + 2 * s + half];
        const float dl = d * float(sc & 0x0f), ml = dmin * float(sc >> 4);
        const uint8_t* q = b.qs + 32 * h + 16 * half;
        for (int l = 0; l < 16; ++l) y[l] = dl * float((q[l] >> (2 * s)) & 3) - ml;
      }
    }
  }
}

// Q3_K: 2 low bits as Q2_K; bit j / 32 of hmask[j % 32] clear subtracts 4.
void q3_k_block(const BlockQ3_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int half = 0; half < 2; ++half, y += 16) {
        const float dl = d * float(q3_k_scale(b.scales, 8 * h + 2 * s + half));
        const uint8_t* q = b.qs + 32 * h + 16 * half;
        const uint8_t* mask = b.hmask + 16 * half;
        const int bit = 4 * h + s;
        for (int l = 0; l < 16; ++l) {
          const int high_clear = ((mask[l] >> bit) & 1) ^ 1;
          y[l] = dl * float(((q[l] >> (2 * s)) & 3) - 4 * high_clear);
        }
      }
    }
  }
}

// Q4_K: sub-block k of 32: nibble k % 2 of qs[32 (k / 2) + l].
void q4_k_block(const BlockQ4_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int k = 0; k < QK_K / 32; ++k) {
    int sc, mn;
    k_scale_min(b.scales, k, &sc, &mn);
    const float dl = d * float(sc), ml = dmin * float(mn);
    for (int l = 0; l < 32; ++l) {
      const int q = (b.qs[32 * (k / 2) + l] >> (4 * (k % 2))) & 0x0f;
      y[32 * k + l] = dl * float(q) - ml;
    }
  }
}

// Q5_K: as Q4_K, plus bit k of qh[l] as bit 4.
void q5_k_block(const BlockQ5_K& b, float* y) {
  const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
  for (int k = 0; k < QK_K / 32; ++k) {
    int sc, mn;
    k_scale_min(b.scales, k, &sc, &mn);
    const float dl = d * float(sc), ml = dmin * float(mn);
    for (int l = 0; l < 32; ++l) {
      const int q = ((b.qs[32 * (k / 2) + l] >> (4 * (k % 2))) & 0x0f) | ((b.qh[l] >> k) & 1) << 4;
      y[32 * k + l] = dl * float(q) - ml;
    }
  }
}

// Q6_K: element j = 128 h + 32 s + l (s in 0..3): low nibble of ql[64 h + l + 32 (s % 2)]
// (high nibble when s >= 2), 2 high bits at 2s of qh[32 h + l]; sub-block j / 16.
void q6_k_block(const BlockQ6_K& b, float* y) {
  const float d = fp16_to_fp32(b.d);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int half = 0; half < 2; ++half, y += 16) {
        const float dl = d * float(b.scales[8 * h + 2 * s + half]);
        const uint8_t* ql = b.ql + 64 * h + 32 * (s % 2) + 16 * half;
        const uint8_t* qh = b.qh + 32 * h + 16 * half;
        for (int l = 0; l < 16; ++l) {
          const int low = (ql[l] >> (4 * (s / 2))) & 0x0f, high = (qh[l] >> (2 * s)) & 3;
          y[l] = dl * float((low | high << 4) - 32);
        }
      }
    }
  }
}

template <class Block, int kBlockSize>
void blocks_row(void (*block_fn)(const Block&, float*), const void* src, float* dst, int64_t n) {
  const Block* blocks = static_cast<const Block*>(src);
  for (int64_t b = 0; b < n / kBlockSize; ++b) block_fn(blocks[b], dst + b * kBlockSize);
}

}  // namespace

void dequantize_row_scalar(GgmlType type, const void* src, float* dst, int64_t n) {
  switch (type) {
    case GgmlType::F32: return f32_row(src, dst, n);
    case GgmlType::F16: return f16_row(src, dst, n);
    case GgmlType::BF16: return bf16_row(src, dst, n);
    case GgmlType::Q4_0: return blocks_row<BlockQ4_0, QK4_0>(q4_0_block, src, dst, n);
    case GgmlType::Q4_1: return blocks_row<BlockQ4_1, QK4_1>(q4_1_block, src, dst, n);
    case GgmlType::Q5_0: return blocks_row<BlockQ5_0, QK5_0>(q5_0_block, src, dst, n);
    case GgmlType::Q5_1: return blocks_row<BlockQ5_1, QK5_1>(q5_1_block, src, dst, n);
    case GgmlType::Q8_0: return blocks_row<BlockQ8_0, QK8_0>(q8_0_block, src, dst, n);
    case GgmlType::Q8_1: return blocks_row<BlockQ8_1, QK8_1>(q8_1_block, src, dst, n);
    case GgmlType::Q2_K: return blocks_row<BlockQ2_K, QK_K>(q2_k_block, src, dst, n);
    case GgmlType::Q3_K: return blocks_row<BlockQ3_K, QK_K>(q3_k_block, src, dst, n);
    case GgmlType::Q4_K: return blocks_row<BlockQ4_K, QK_K>(q4_k_block, src, dst, n);
    case GgmlType::Q5_K: return blocks_row<BlockQ5_K, QK_K>(q5_k_block, src, dst, n);
    case GgmlType::Q6_K: return blocks_row<BlockQ6_K, QK_K>(q6_k_block, src, dst, n);
  }
  throw std::invalid_argument("dequantize_row: unsupported GGML type " +
                              std::to_string(static_cast<int>(type)));
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  switch (active_isa()) {
    case Isa::avx512:
      if (dequantize_row_avx512(type, src, dst, n)) return;
      break;
    case Isa::avx2:
      if (dequantize_row_avx2(type, src, dst, n)) return;
      break;
    case Isa::scalar:
      break;
  }
#endif
  dequantize_row_scalar(type, src, dst, n);
}

}  // namespace ggtune
