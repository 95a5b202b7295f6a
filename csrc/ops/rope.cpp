#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"

namespace ggtune::ops {
namespace {

// ggml_rope_yarn_corr_dims: the pairs [lo, hi] over which YaRN blends from extrapolated to
// interpolated angles. In float, as ggml computes it, so floor/ceil land on the same pairs.
void yarn_corr_dims(const RopeParams& p, float* lo, float* hi) {
  const auto corr_dim = [&](float n_rot) {
    return float(p.n_dims) * std::log(float(p.n_ctx_orig) / (n_rot * 2.0f * float(M_PI))) /
           (2.0f * std::log(p.freq_base));
  };
  *lo = std::max(0.0f, std::floor(corr_dim(p.beta_fast)));
  *hi = std::min(float(p.n_dims - 1), std::ceil(corr_dim(p.beta_slow)));
}

// What every position shares: theta_i = pos * pos_scale[i] * freq[i], magnitude mscale.
// Doubles: float powf/sinf drift visibly at long positions.
struct RopeFrequencies {
  std::vector<double> freq;       // base^(-2i/n_dims) / freq_factors[i]
  std::vector<double> pos_scale;  // freq_scale, or YaRN's blend of freq_scale and 1
  double mscale;
};

RopeFrequencies rope_frequencies(const RopeParams& p) {
  const int64_t half = p.n_dims / 2;
  RopeFrequencies f{std::vector<double>(half), std::vector<double>(half, double(p.freq_scale)),
                    double(p.attn_factor)};
  for (int64_t i = 0; i < half; ++i) {
    f.freq[i] = std::pow(double(p.freq_base), -2.0 * double(i) / double(p.n_dims));
    if (p.freq_factors) f.freq[i] /= double(p.freq_factors[i]);
  }
  if (p.ext_factor != 0.0f) {
    float lo, hi;
    yarn_corr_dims(p, &lo, &hi);
    for (int64_t i = 0; i < half; ++i) {
      // In double: theta reaches 1e4-1e5 radians, where a float mix would shift it visibly.
      const double y = (double(i) - lo) / std::max(0.001, double(hi) - lo);
      const double mix = (1.0 - std::clamp(y, 0.0, 1.0)) * p.ext_factor;
      f.pos_scale[i] = double(p.freq_scale) * (1.0 - mix) + mix;
    }
    f.mscale = double(p.attn_factor * (1.0f + 0.1f * std::log(1.0f / p.freq_scale)));
  }
  return f;
}

// mscale * cos and sign * mscale * sin of theta_i for one position, i in [0, half).
void angles(int32_t pos, const RopeFrequencies& f, float sign, float* cos_out, float* sin_out) {
  for (size_t i = 0; i < f.freq.size(); ++i) {
    const double theta = double(pos) * f.pos_scale[i] * f.freq[i];
    cos_out[i] = float(std::cos(theta) * f.mscale);
    sin_out[i] = sign * float(std::sin(theta) * f.mscale);
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
  const RopeFrequencies f = rope_frequencies(p);
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
        angles(int32_t(lo + q), f, sign, &table[2 * q * half], &table[(2 * q + 1) * half]);
    });
  }
  parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
    std::vector<float> own(tabled ? 0 : 2 * half);
    for (int64_t t = t0; t < t1; ++t) {
      const float* cos_t = tabled ? &table[2 * (pos[t] - lo) * half] : own.data();
      const float* sin_t = cos_t + half;
      if (!tabled) angles(pos[t], f, sign, own.data(), own.data() + half);
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
