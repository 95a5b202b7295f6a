#include "ops/activation_impl.h"

namespace ggtune::ops {
const ActivationKernels activation_kernels_avx512 = make_activation_kernels<Avx512>();
}
