// Element-wise kernels: the feed-forward gates SwiGLU (llama, qwen) and GEGLU (gemma) forward
// and backward, bias add and its backward (qwen2's q/k/v biases), and the plain element-wise
// arithmetic the trainer needs (residual add, scaled accumulate).
// Legend: T tokens, F feed-forward width, N features of a biased product; n = number of
// elements of a flat array.
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
  // out = gelu_tanh(gate) * up,  gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
  void (*geglu_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                        float* out /*[T,F]*/, int64_t n);
  // out = gelu_ggml(gate) * up as ggml-cpu computes it (GGML_GELU_FP16, its default): 0 for
  // gate <= -10, gelu_tanh(gate) = gate for gate >= 10, else gate rounded to binary16 and looked
  // up in ggml_gelu_table. Inference with precision "ggml" only (no backward).
  void (*geglu_ggml_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                             float* out /*[T,F]*/, int64_t n);
  // dgate, dup overwritten.
  void (*geglu_backward)(const float* dout /*[T,F]*/, const float* gate, const float* up,
                         float* dgate /*[T,F]*/, float* dup /*[T,F]*/, int64_t n);
  // y[t,:] += bias, in place.
  void (*add_bias)(float* y /*[T,N]*/, const float* bias /*[N]*/, int64_t T, int64_t N);
  // dbias = (accumulate ? dbias : 0) + sum_t dy[t,:], rows summed in order (deterministic).
  void (*bias_backward)(const float* dy /*[T,N]*/, float* dbias /*[N]*/, int64_t T, int64_t N,
                        bool accumulate);
  void (*add)(const float* a /*[n]*/, const float* b /*[n]*/, float* out /*[n]*/, int64_t n);
  // out += alpha * x
  void (*scale_add)(float* out /*[n]*/, const float* x /*[n]*/, float alpha, int64_t n);
};

const ActivationKernels& activation_kernels();  // the active tier's kernels

// ggml-cpu's GELU table, indexed by binary16 bits h: gelu_tanh of half(h), evaluated in float32
// as ggml_gelu_f32 does (0.5 x (1 + tanhf(sqrt(2/pi) x (1 + 0.044715 x^2)))) and rounded to
// binary16, stored widened to float32 so that SIMD tiers gather from it. Built once (256 KiB).
const float* ggml_gelu_table();

#if defined(__x86_64__)
extern const ActivationKernels activation_kernels_avx2, activation_kernels_avx512;
#endif

}  // namespace ggtune::ops
