#include "ops/activation_impl.h"

namespace ggtune::ops {
const ActivationKernels activation_kernels_avx2 = make_activation_kernels<Avx2>();
}
