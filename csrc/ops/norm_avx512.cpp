#include "ops/norm_impl.h"

namespace ggtune::ops {
const NormKernels norm_kernels_avx512 = make_norm_kernels<Avx512>();
}
