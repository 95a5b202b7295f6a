// RMS normalisation with a learned weight (llama's attention/ffn norm), forward and backward.
// Legend: T tokens (rows), C channels.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct NormKernels {
  // out[t,c] = x[t,c] * rstd[t] * weight[c],  rstd[t] = 1 / sqrt(mean_c x[t,c]^2 + eps)
  void (*rms_norm_forward)(const float* x /*[T,C]*/, const float* weight /*[C]*/, float eps,
                           float* out /*[T,C]*/, float* rstd /*[T]*/, int64_t T, int64_t C);
  // dx overwritten, = the norm's input gradient + residual (when not null: a residual branch's
  // gradient, added in the same pass, the same bits as adding it after); dweight (may be null)
  // accumulated.
  void (*rms_norm_backward)(const float* dout /*[T,C]*/, const float* x /*[T,C]*/,
                            const float* weight /*[C]*/, const float* rstd /*[T]*/,
                            const float* residual /*[T,C] or null*/, float* dx /*[T,C]*/,
                            float* dweight /*[C] or null*/, int64_t T, int64_t C);
  // The same two with x as bfloat16 bits (a layer's compact kept arrays: x1, Gemma's o and f).
  void (*rms_norm_forward_bf16)(const uint16_t* x /*[T,C]*/, const float* weight /*[C]*/,
                                float eps, float* out /*[T,C]*/, float* rstd /*[T]*/, int64_t T,
                                int64_t C);
  void (*rms_norm_backward_bf16)(const float* dout /*[T,C]*/, const uint16_t* x /*[T,C]*/,
                                 const float* weight /*[C]*/, const float* rstd /*[T]*/,
                                 const float* residual /*[T,C] or null*/, float* dx /*[T,C]*/,
                                 float* dweight /*[C] or null*/, int64_t T, int64_t C);
};

const NormKernels& norm_kernels();  // the active tier's kernels

#if defined(__x86_64__)
extern const NormKernels norm_kernels_avx2, norm_kernels_avx512;
#endif

}  // namespace ggtune::ops
