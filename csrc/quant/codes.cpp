// Unpacking GGUF blocks to u8 codes (codes.h). The formulas mirror dequant.cpp; d * u + c
// reproduces each dequantized value exactly (every product is exact, see dequant.cpp).
#include "quant/codes.h"

#include <stdexcept>
#include <type_traits>

#include "dispatch.h"
#include "quant/blocks.h"

namespace ggtune {
namespace {

// Nibbles of a 32-block: element i in the low nibble of qs[i], i + 16 in the high one;
// with qh, bit i of it is bit 4 of element i.
void nibbles(const uint8_t* qs, const uint8_t* qh, uint8_t* u) {
  const uint32_t high = qh ? load_qh(qh) : 0;
  for (int i = 0; i < 16; ++i) {
    u[i] = uint8_t((qs[i] & 0x0f) | ((high >> i) & 1) << 4);
    u[i + 16] = uint8_t((qs[i] >> 4) | ((high >> (i + 16)) & 1) << 4);
  }
}

template <class Block, class Fn>
void each_block(const void* src, int64_t n, int64_t block_size, Fn fn) {
  const auto* blocks = static_cast<const Block*>(src);
  for (int64_t b = 0; b < n / block_size; ++b) fn(blocks[b], b);
}

// Q4_K / Q5_K: sub-block k holds nibble k % 2 of qs[32 (k / 2) + l] and bit k of qh[l].
template <class Block>
void k_quant_rows(const void* src, int64_t n, uint8_t* u, float* d, float* c) {
  each_block<Block>(src, n, QK_K, [&](const Block& blk, int64_t b) {
    const float dd = fp16_to_fp32(blk.d), dmin = fp16_to_fp32(blk.dmin);
    for (int k = 0; k < QK_K / 32; ++k) {
      int sc, mn;
      k_scale_min(blk.scales, k, &sc, &mn);
      const int64_t sub = b * (QK_K / 32) + k;
      d[sub] = dd * float(sc);
      c[sub] = -(dmin * float(mn));
      for (int l = 0; l < 32; ++l) {
        int q = (blk.qs[32 * (k / 2) + l] >> (4 * (k % 2))) & 0x0f;
        if constexpr (std::is_same_v<Block, BlockQ5_K>) q |= ((blk.qh[l] >> k) & 1) << 4;
        u[sub * 32 + l] = uint8_t(q);
      }
    }
  });
}

}  // namespace

bool has_u8_codes(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::Q8_0: case GgmlType::Q4_K: case GgmlType::Q5_K: return true;
    default: return false;
  }
}

void unpack_row_u8_scalar(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d,
                          float* c) {
  switch (type) {
    case GgmlType::Q4_0:
      return each_block<BlockQ4_0>(src, n, 32, [&](const BlockQ4_0& blk, int64_t b) {
        nibbles(blk.qs, nullptr, u + 32 * b);
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -8.0f * d[b];
      });
    case GgmlType::Q4_1:
      return each_block<BlockQ4_1>(src, n, 32, [&](const BlockQ4_1& blk, int64_t b) {
        nibbles(blk.qs, nullptr, u + 32 * b);
        d[b] = fp16_to_fp32(blk.d);
        c[b] = fp16_to_fp32(blk.m);
      });
    case GgmlType::Q5_0:
      return each_block<BlockQ5_0>(src, n, 32, [&](const BlockQ5_0& blk, int64_t b) {
        nibbles(blk.qs, blk.qh, u + 32 * b);
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -16.0f * d[b];
      });
    case GgmlType::Q5_1:
      return each_block<BlockQ5_1>(src, n, 32, [&](const BlockQ5_1& blk, int64_t b) {
        nibbles(blk.qs, blk.qh, u + 32 * b);
        d[b] = fp16_to_fp32(blk.d);
        c[b] = fp16_to_fp32(blk.m);
      });
    case GgmlType::Q8_0:
      return each_block<BlockQ8_0>(src, n, 32, [&](const BlockQ8_0& blk, int64_t b) {
        for (int i = 0; i < 32; ++i) u[32 * b + i] = uint8_t(int(blk.qs[i]) + 128);
        d[b] = fp16_to_fp32(blk.d);
        c[b] = -128.0f * d[b];
      });
    case GgmlType::Q4_K: return k_quant_rows<BlockQ4_K>(src, n, u, d, c);
    case GgmlType::Q5_K: return k_quant_rows<BlockQ5_K>(src, n, u, d, c);
    default: break;
  }
  throw std::invalid_argument("unpack_row_u8: no u8 codes for this GGML type");
}

void unpack_row_u8(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c) {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 && unpack_row_u8_avx512(type, src, n, u, d, c)) return;
#endif
  unpack_row_u8_scalar(type, src, n, u, d, c);
}

}  // namespace ggtune
