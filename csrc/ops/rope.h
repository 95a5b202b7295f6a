// Rotary position embedding with llama.cpp's semantics, forward and backward.
// Legend: T tokens, H heads, D head dim.
//   theta_i = pos * freq_scale * freq_base^(-2i / n_dims),  i in [0, n_dims/2)
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
  int mode;  // kRopeNormal or kRopeNeox
};

// out = rotate(x, theta); out may be x (in place).
void rope_forward(const float* x /*[T,H,D]*/, const int32_t* pos /*[T]*/, const RopeParams& p,
                  float* out /*[T,H,D]*/, int64_t T, int64_t H, int64_t D);
// dx = rotate(dout, -theta), the transpose of the forward rotation; dx may be dout.
void rope_backward(const float* dout /*[T,H,D]*/, const int32_t* pos /*[T]*/, const RopeParams& p,
                   float* dx /*[T,H,D]*/, int64_t T, int64_t H, int64_t D);

}  // namespace ggtune::ops
