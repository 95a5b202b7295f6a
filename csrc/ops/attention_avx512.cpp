#include "ops/attention_bf16.h"

namespace ggtune::ops {
const AttentionKernels attention_kernels_avx512 =
    make_attention_kernels<Avx512, Bf16ForwardTiles, Bf16BackwardTiles>();
}
