// AVX-512 unpacking of the 32-blocks to u8 codes (codes.h), one block decoder per type
// (codes_simd.h): nibbles split with two masks, Q5's fifth bits expanded from qh with a byte
// mask, Q8_0 shifted by 128 with one xor.
#include <immintrin.h>

#include "quant/codes.h"
#include "quant/codes_simd.h"

namespace ggtune {
namespace {

template <class Block>
bool unpack_blocks(const void* src, int64_t n, uint8_t* u, float* d, float* c) {
  const auto* blocks = static_cast<const Block*>(src);
  for (int64_t b = 0; b < n / 32; ++b)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u + 32 * b), block_codes(blocks[b], d + b, c + b));
  return true;
}

}  // namespace

bool unpack_row_u8_avx512(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c) {
  switch (type) {
    case GgmlType::Q4_0: return unpack_blocks<BlockQ4_0>(src, n, u, d, c);
    case GgmlType::Q4_1: return unpack_blocks<BlockQ4_1>(src, n, u, d, c);
    case GgmlType::Q5_0: return unpack_blocks<BlockQ5_0>(src, n, u, d, c);
    case GgmlType::Q5_1: return unpack_blocks<BlockQ5_1>(src, n, u, d, c);
    case GgmlType::Q8_0: return unpack_blocks<BlockQ8_0>(src, n, u, d, c);
    default: return false;
  }
}

}  // namespace ggtune
