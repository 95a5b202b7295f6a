#include "ops/loss_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr LossKernels loss_kernels_scalar = make_loss_kernels<Scalar>();
}

const LossKernels& loss_kernels() {
  return active_table(loss_kernels_scalar, GGTUNE_X86(&loss_kernels_avx2),
                      GGTUNE_X86(&loss_kernels_avx512));
}

}  // namespace ggtune::ops
