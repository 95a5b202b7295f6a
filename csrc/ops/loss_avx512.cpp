#include "ops/loss_impl.h"

namespace ggtune::ops {
const LossKernels loss_kernels_avx512 = make_loss_kernels<Avx512>();
}
