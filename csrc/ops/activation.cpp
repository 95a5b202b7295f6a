#include "ops/activation_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr ActivationKernels activation_kernels_scalar = make_activation_kernels<Scalar>();
}

const ActivationKernels& activation_kernels() {
  return active_table(activation_kernels_scalar, GGTUNE_X86(&activation_kernels_avx2),
                      GGTUNE_X86(&activation_kernels_avx512));
}

}  // namespace ggtune::ops
