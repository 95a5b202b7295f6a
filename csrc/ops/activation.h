// Element-wise kernels: SwiGLU (llama's feed-forward gate) forward and backward, and the
// plain element-wise arithmetic the trainer needs (residual add, scaled accumulate).
// Legend: T tokens, F feed-forward width; n = number of elements of a flat array.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct ActivationKernels {
  // out = silu(gate) * up,  silu(g) = g * sigmoid(g)
  void (*swiglu_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                         float* out /*[T,F]*/, int64_t n);
  // dgate, dup overwritten.
  void (*swiglu_backward)(const float* dout /*[T,F]*/, const float* gate, const float* up,
                          float* dgate /*[T,F]*/, float* dup /*[T,F]*/, int64_t n);
  void (*add)(const float* a /*[n]*/, const float* b /*[n]*/, float* out /*[n]*/, int64_t n);
  // out += alpha * x
  void (*scale_add)(float* out /*[n]*/, const float* x /*[n]*/, float alpha, int64_t n);
};

const ActivationKernels& activation_kernels();  // the active tier's kernels

#if defined(__x86_64__)
extern const ActivationKernels activation_kernels_avx2, activation_kernels_avx512;
#endif

}  // namespace ggtune::ops
