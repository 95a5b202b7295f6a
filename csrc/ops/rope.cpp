#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"

namespace ggtune::ops {
namespace {

// cos and sign * sin of theta_i for one position, i in [0, half). Angles in double: float
// powf/sinf drift visibly at long positions.
void angles(int32_t pos, const std::vector<double>& inv_freq, const RopeParams& p, float sign,
            float* cos_out, float* sin_out) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double theta = double(pos) * p.freq_scale * inv_freq[i];
    cos_out[i] = float(std::cos(theta));
    sin_out[i] = sign * float(std::sin(theta));
  }
}

// Rotates every head of every token by +theta (sign = 1) or -theta (sign = -1).
void rope_rotate(const float* x, const int32_t* pos, const RopeParams& p, float sign, float* out,
                 int64_t T, int64_t H, int64_t D) {
  if (T <= 0) return;
  const int64_t half = p.n_dims / 2;
  // Pair i is (first(i), first(i) + stride): adjacent in normal mode, half apart in neox mode.
  const int64_t stride = p.mode == kRopeNeox ? half : 1;
  const int64_t step = p.mode == kRopeNeox ? 1 : 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = std::pow(double(p.freq_base), -2.0 * double(i) / double(p.n_dims));
  // A batch repeats its positions (every sequence counts from 0): when they span no more than
  // T values, each position's angles are computed once, into a table (sin and cos cost more
  // than the rotation itself).
  const auto [lo_it, hi_it] = std::minmax_element(pos, pos + T);
  const int64_t lo = *lo_it, span = int64_t(*hi_it) - lo + 1;
  const bool tabled = span <= T;
  std::vector<float> table(tabled ? 2 * span * half : 0);
  if (tabled) {
    parallel_for(span, 64, [&](int64_t p0, int64_t p1) {
      for (int64_t q = p0; q < p1; ++q)
        angles(int32_t(lo + q), inv_freq, p, sign, &table[2 * q * half], &table[(2 * q + 1) * half]);
    });
  }
  parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
    std::vector<float> own(tabled ? 0 : 2 * half);
    for (int64_t t = t0; t < t1; ++t) {
      const float* cos_t = tabled ? &table[2 * (pos[t] - lo) * half] : own.data();
      const float* sin_t = cos_t + half;
      if (!tabled) angles(pos[t], inv_freq, p, sign, own.data(), own.data() + half);
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
