// GGUF tensor types ggtune reads. Ids are ggml's (the values stored in GGUF files).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ggtune {

enum class GgmlType : int32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
};

// nullptr for a type ggtune does not support.
const TypeTraits* type_traits(int32_t type);

// Bytes of a row of n elements (n a multiple of block_size).
inline int64_t row_bytes(const TypeTraits& t, int64_t n) { return n / t.block_size * t.type_size; }

}  // namespace ggtune
