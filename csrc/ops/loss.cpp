#include "ops/loss_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr LossKernels loss_kernels_scalar = make_loss_kernels<Scalar>();
}

const LossKernels& loss_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return loss_kernels_avx512;
    case Isa::avx2: return loss_kernels_avx2;
    case Isa::scalar: break;
  }
#endif
  return loss_kernels_scalar;
}

}  // namespace ggtune::ops
