// Rotary position embedding with llama.cpp's semantics (ggml_rope_ext), forward and backward.
// Legend: T tokens, H heads, D head dim, pair i in [0, n_dims/2).
//   theta_extrap_i = pos * freq_base^(-2i / n_dims) / freq_factors[i]   (factors 1 when absent)
//   theta_i = freq_scale * theta_extrap_i                                 (ext_factor = 0)
//   YaRN (ext_factor != 0): with ramp_i = 1 - clamp((i - lo) / max(0.001, hi - lo), 0, 1),
//     lo/hi = ggml_rope_yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow),
//     mix_i = ramp_i * ext_factor,  theta_i = freq_scale * theta_extrap_i * (1 - mix_i)
//                                              + theta_extrap_i * mix_i,
//     and the magnitude mscale = attn_factor * (1 + 0.1 ln(1 / freq_scale)).
//   Without YaRN mscale = attn_factor. The rotation is by theta_i, scaled by mscale:
//   mode 0 (normal): rotates the adjacent pairs (2i, 2i+1)
//   mode 2 (neox):   rotates the pairs (i, i + n_dims/2)
//   dims >= n_dims pass through unchanged.
// The rotation is memory bound and the compiler vectorises its loops, so it has one
// portable implementation for every tier.
#pragma once

#include <cstdint>

namespace ggtune::ops {

constexpr int kRopeNormal = 0;
constexpr int kRopeNeox = 2;

struct RopeParams {
  int64_t n_dims;
  float freq_base;
  float freq_scale;
  int mode;                               // kRopeNormal or kRopeNeox
  const float* freq_factors = nullptr;    // [n_dims/2] or null (all 1)
  float ext_factor = 0.0f;                // YaRN ramp weight; 0 turns YaRN off
  float attn_factor = 1.0f;               // magnitude of the rotation (mscale)
  float beta_fast = 32.0f, beta_slow = 1.0f;
  int64_t n_ctx_orig = 0;                 // the training context YaRN corrects for
};

// out = rotate(x, theta); out may be x (in place).
void rope_forward(const float* x /*[T,H,D]*/, const int32_t* pos /*[T]*/, const RopeParams& p,
                  float* out /*[T,H,D]*/, int64_t T, int64_t H, int64_t D);
// dx = rotate(dout, -theta), the transpose of the forward rotation; dx may be dout.
void rope_backward(const float* dout /*[T,H,D]*/, const int32_t* pos /*[T]*/, const RopeParams& p,
                   float* dx /*[T,H,D]*/, int64_t T, int64_t H, int64_t D);

}  // namespace ggtune::ops
