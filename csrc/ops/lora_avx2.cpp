#include "ops/lora_impl.h"

namespace ggtune::ops {
const LoraKernels lora_kernels_avx2 = make_lora_kernels<Avx2>();
}  // namespace ggtune::ops
