#include "ops/lora_impl.h"

namespace ggtune::ops {
const LoraKernels lora_kernels_avx512 = make_lora_kernels<Avx512>();
}  // namespace ggtune::ops
