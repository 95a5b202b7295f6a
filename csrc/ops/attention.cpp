#include "ops/attention_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr AttentionKernels attention_kernels_scalar = make_attention_kernels<Scalar>();
}

const AttentionKernels& attention_kernels() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::avx512: return attention_kernels_avx512;
    case Isa::avx2: return attention_kernels_avx2;
    case Isa::scalar: break;
  }
#endif
  return attention_kernels_scalar;
}

}  // namespace ggtune::ops
