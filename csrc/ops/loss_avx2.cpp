#include "ops/loss_impl.h"

namespace ggtune::ops {
const LossKernels loss_kernels_avx2 = make_loss_kernels<Avx2>();
}
