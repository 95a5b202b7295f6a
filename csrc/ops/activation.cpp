#include "ops/activation_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr ActivationKernels activation_kernels_scalar = make_activation_kernels<Scalar>();
}

const ActivationKernels& activation_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return activation_kernels_avx512;
    case Isa::avx2: return activation_kernels_avx2;
    case Isa::scalar: break;
  }
#endif
  return activation_kernels_scalar;
}

}  // namespace ggtune::ops
