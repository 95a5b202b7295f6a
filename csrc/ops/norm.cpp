#include "ops/norm_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr NormKernels norm_kernels_scalar = make_norm_kernels<Scalar>();
}

const NormKernels& norm_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return norm_kernels_avx512;
    case Isa::avx2: return norm_kernels_avx2;
    case Isa::scalar: break;
  }
#endif
  return norm_kernels_scalar;
}

}  // namespace ggtune::ops
