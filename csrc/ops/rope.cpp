#include "ops/rope.h"

#include <cmath>
#include <vector>

#include "parallel.h"

namespace ggtune::ops {
namespace {

// Rotates every head of every token by +theta (sign = 1) or -theta (sign = -1).
void rope_rotate(const float* x, const int32_t* pos, const RopeParams& p, float sign, float* out,
                 int64_t T, int64_t H, int64_t D) {
  const int64_t half = p.n_dims / 2;
  // Pair i is (first(i), first(i) + stride): adjacent in normal mode, half apart in neox mode.
  const int64_t stride = p.mode == kRopeNeox ? half : 1;
  const int64_t step = p.mode == kRopeNeox ? 1 : 2;
  parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
    std::vector<float> cos_t(half), sin_t(half);
    for (int64_t t = t0; t < t1; ++t) {
      // Angles in double: float powf/sinf drift visibly at long positions.
      for (int64_t i = 0; i < half; ++i) {
        const double theta = double(pos[t]) * p.freq_scale *
                             std::pow(double(p.freq_base), -2.0 * double(i) / double(p.n_dims));
        cos_t[i] = float(std::cos(theta));
        sin_t[i] = sign * float(std::sin(theta));
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + (t * H + h) * D;
        float* outr = out + (t * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t a = i * step, b = a + stride;
          const float x0 = xr[a], x1 = xr[b];  // both read before either is written (in place)
          outr[a] = x0 * cos_t[i] - x1 * sin_t[i];
          outr[b] = x0 * sin_t[i] + x1 * cos_t[i];
        }
        for (int64_t d = p.n_dims; d < D; ++d) outr[d] = xr[d];
      }
    }
  });
}

}  // namespace

void rope_forward(const float* x, const int32_t* pos, const RopeParams& p, float* out, int64_t T,
                  int64_t H, int64_t D) {
  rope_rotate(x, pos, p, 1.0f, out, T, H, D);
}

void rope_backward(const float* dout, const int32_t* pos, const RopeParams& p, float* dx,
                   int64_t T, int64_t H, int64_t D) {
  rope_rotate(dout, pos, p, -1.0f, dx, T, H, D);
}

}  // namespace ggtune::ops
