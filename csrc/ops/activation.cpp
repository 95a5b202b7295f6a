#include "ops/activation_impl.h"

#include <cmath>
#include <vector>

#include "dispatch.h"
#include "quant/blocks.h"

namespace ggtune::ops {

namespace {
constexpr ActivationKernels activation_kernels_scalar = make_activation_kernels<Scalar>();
}

const float* ggml_gelu_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(1 << 16);
    for (uint32_t h = 0; h < t.size(); ++h) {
      const float x = fp16_to_fp32(half_bits(h));
      // ggml_gelu_f32 as compilers build it for x86 with FMA: 1 + 0.044715 x^2 contracted into
      // one fma (without it, entries such as gelu(-1.999) round to the other binary16 neighbour)
      const float cubic = std::fma(0.044715f * x, x, 1.0f);
      const float gelu = 0.5f * x * (1.0f + std::tanh(0.79788456080286535588f * x * cubic));
      t[h] = fp16_to_fp32(fp32_to_fp16(gelu));
    }
    return t;
  }();
  return table.data();
}

const ActivationKernels& activation_kernels() {
  return active_table(activation_kernels_scalar, GGTUNE_X86(&activation_kernels_avx2),
                      GGTUNE_X86(&activation_kernels_avx512));
}

}  // namespace ggtune::ops
