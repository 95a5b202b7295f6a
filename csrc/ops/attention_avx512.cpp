#include "ops/attention_impl.h"

namespace ggtune::ops {
const AttentionKernels attention_kernels_avx512 = make_attention_kernels<Avx512>();
}
