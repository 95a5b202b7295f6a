#include "ops/norm_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr NormKernels norm_kernels_scalar = make_norm_kernels<Scalar>();
}

const NormKernels& norm_kernels() {
  return active_table(norm_kernels_scalar, GGTUNE_X86(&norm_kernels_avx2),
                      GGTUNE_X86(&norm_kernels_avx512));
}

}  // namespace ggtune::ops
