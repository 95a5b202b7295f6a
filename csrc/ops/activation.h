// Element-wise kernels: the feed-forward gates SwiGLU (llama, qwen) and GEGLU (gemma) forward
// and backward, bias add and its backward (qwen2's q/k/v biases), and the plain element-wise
// arithmetic the trainer needs (residual add, scaled accumulate).
// Legend: T tokens, F feed-forward width, N features of a biased product; n = number of
// elements of a flat array.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct ActivationKernels {
  // out = silu(gate) * up,  silu(g) = g * sigmoid(g). When gate_bf16 and up_bf16 are not null
  // (both or neither), they receive the bfloat16 bits of gate and up in the same pass (the
  // compact copies a training layer keeps; fp32_to_bf16's rounding).
  void (*swiglu_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                         float* out /*[T,F]*/, uint16_t* gate_bf16 /*[T,F] or null*/,
                         uint16_t* up_bf16 /*[T,F] or null*/, int64_t n);
  // dgate = dout * up * silu'(gate), dup = dout * silu(gate), overwritten; act, when not null,
  // = silu(gate) * up, the forward's product recomputed in the same pass (bit for bit the
  // forward's from the same gate and up).
  void (*swiglu_backward)(const float* dout /*[T,F]*/, const float* gate, const float* up,
                          float* dgate /*[T,F]*/, float* dup /*[T,F]*/, float* act /*[T,F] or null*/,
                          int64_t n);
  // The same, reading gate and up as bfloat16 bits (a layer's compact kept arrays).
  void (*swiglu_backward_bf16)(const float* dout /*[T,F]*/, const uint16_t* gate,
                               const uint16_t* up, float* dgate /*[T,F]*/, float* dup /*[T,F]*/,
                               float* act /*[T,F] or null*/, int64_t n);
  // out = gelu_tanh(gate) * up,  gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)));
  // gate_bf16, up_bf16 as swiglu_forward's.
  void (*geglu_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                        float* out /*[T,F]*/, uint16_t* gate_bf16 /*[T,F] or null*/,
                        uint16_t* up_bf16 /*[T,F] or null*/, int64_t n);
  // out = gelu_ggml(gate) * up as ggml-cpu computes it (GGML_GELU_FP16, its default): 0 for
  // gate <= -10, gelu_tanh(gate) = gate for gate >= 10, else gate rounded to binary16 and looked
  // up in ggml_gelu_table. Inference with precision "ggml" only (no backward).
  void (*geglu_ggml_forward)(const float* gate /*[T,F]*/, const float* up /*[T,F]*/,
                             float* out /*[T,F]*/, int64_t n);
  // As swiglu_backward / swiglu_backward_bf16, with gelu_tanh.
  void (*geglu_backward)(const float* dout /*[T,F]*/, const float* gate, const float* up,
                         float* dgate /*[T,F]*/, float* dup /*[T,F]*/, float* act /*[T,F] or null*/,
                         int64_t n);
  void (*geglu_backward_bf16)(const float* dout /*[T,F]*/, const uint16_t* gate,
                              const uint16_t* up, float* dgate /*[T,F]*/, float* dup /*[T,F]*/,
                              float* act /*[T,F] or null*/, int64_t n);
  // y[t,:] += bias, in place.
  void (*add_bias)(float* y /*[T,N]*/, const float* bias /*[N]*/, int64_t T, int64_t N);
  // dbias = (accumulate ? dbias : 0) + sum_t dy[t,:], rows summed in order (deterministic).
  void (*bias_backward)(const float* dy /*[T,N]*/, float* dbias /*[N]*/, int64_t T, int64_t N,
                        bool accumulate);
  // out = a + b; out_bf16, when not null, also receives its bfloat16 bits (a compact kept copy).
  void (*add)(const float* a /*[n]*/, const float* b /*[n]*/, float* out /*[n]*/,
              uint16_t* out_bf16 /*[n] or null*/, int64_t n);
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
