#include "ops/attention_impl.h"

namespace ggtune::ops {
const AttentionKernels attention_kernels_avx2 = make_attention_kernels<Avx2>();
}
