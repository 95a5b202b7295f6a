#include "ops/attention_impl.h"

#include "dispatch.h"

namespace ggtune::ops {

namespace {
constexpr AttentionKernels attention_kernels_scalar = make_attention_kernels<Scalar>();
}

const AttentionKernels& attention_kernels() {
  return active_table(attention_kernels_scalar, GGTUNE_X86(&attention_kernels_avx2),
                      GGTUNE_X86(&attention_kernels_avx512));
}

int64_t attention_backward_scratch_bytes(const AttentionShape& s, AttentionTiles tiles) {
  // what the active tier runs for a bf16 request (make_attention_kernels)
  const AttentionTiles ran = active_isa() == Isa::avx512 ? tiles : AttentionTiles::f32;
  return BackwardScratch(s, ran).total_floats() * int64_t(sizeof(float));
}

}  // namespace ggtune::ops
