#include "ops/lora_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr LoraKernels lora_kernels_scalar = make_lora_kernels<Scalar>();
}

const LoraKernels& lora_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return lora_kernels_avx512;
    case Isa::avx2: return lora_kernels_avx2;
    case Isa::scalar: break;
  }
#endif
  return lora_kernels_scalar;
}

}  // namespace ggtune::ops
