#include "ops/lora_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr LoraKernels lora_kernels_scalar = make_lora_kernels<Scalar>();
}

const LoraKernels& lora_kernels() {
  return active_table(lora_kernels_scalar, GGTUNE_X86(&lora_kernels_avx2),
                      GGTUNE_X86(&lora_kernels_avx512));
}

}  // namespace ggtune::ops
