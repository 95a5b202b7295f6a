#include "quant/types.h"

#include "quant/blocks.h"

namespace ggtune {

const TypeTraits* type_traits(int32_t type) {
  static const TypeTraits f32{"F32", 1, 4}, f16{"F16", 1, 2}, bf16{"BF16", 1, 2},
      q4_0{"Q4_0", QK4_0, sizeof(BlockQ4_0)}, q4_1{"Q4_1", QK4_1, sizeof(BlockQ4_1)},
      q5_0{"Q5_0", QK5_0, sizeof(BlockQ5_0)}, q5_1{"Q5_1", QK5_1, sizeof(BlockQ5_1)},
      q8_0{"Q8_0", QK8_0, sizeof(BlockQ8_0)}, q8_1{"Q8_1", QK8_1, sizeof(BlockQ8_1)},
      q2_k{"Q2_K", QK_K, sizeof(BlockQ2_K)}, q3_k{"Q3_K", QK_K, sizeof(BlockQ3_K)},
      q4_k{"Q4_K", QK_K, sizeof(BlockQ4_K)}, q5_k{"Q5_K", QK_K, sizeof(BlockQ5_K)},
      q6_k{"Q6_K", QK_K, sizeof(BlockQ6_K)};
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: return &f32;
    case GgmlType::F16: return &f16;
    case GgmlType::BF16: return &bf16;
    case GgmlType::Q4_0: return &q4_0;
    case GgmlType::Q4_1: return &q4_1;
    case GgmlType::Q5_0: return &q5_0;
    case GgmlType::Q5_1: return &q5_1;
    case GgmlType::Q8_0: return &q8_0;
    case GgmlType::Q8_1: return &q8_1;
    case GgmlType::Q2_K: return &q2_k;
    case GgmlType::Q3_K: return &q3_k;
    case GgmlType::Q4_K: return &q4_k;
    case GgmlType::Q5_K: return &q5_k;
    case GgmlType::Q6_K: return &q6_k;
  }
  return nullptr;
}

}  // namespace ggtune
