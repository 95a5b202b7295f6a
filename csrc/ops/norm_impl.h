// RMS norm kernels as templates over a vector type (see simd_vec.h); included once per tier.
#pragma once

#include "ops/norm.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

constexpr int64_t kNormRowGrain = 16;

// x float32 or bfloat16 bits (load_as).
template <class V, class In>
void rms_norm_forward_v(const In* x, const float* weight, float eps, float* out, float* rstd,
                        int64_t T, int64_t C) {
  parallel_for(T, kNormRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const In* xr = x + t * C;
      const float sum_sq = reduce_sum<V>(C, [&](auto u, int64_t i) {
        using U = decltype(u);
        const auto xi = load_as<U>(xr + i);
        return U::mul(xi, xi);
      });
      const float r = 1.0f / std::sqrt(sum_sq / float(C) + eps);
      rstd[t] = r;
      float* outr = out + t * C;
      for_chunks<V>(C, [&](auto u, int64_t i) {
        using U = decltype(u);
        U::store(outr + i, U::mul(U::mul(load_as<U>(xr + i), U::set1(r)), U::load(weight + i)));
      });
    }
  });
}

// With y = x * r * w and r = (mean x^2 + eps)^-1/2:
//   dx_i = r * w_i * g_i - x_i * r^3 / C * sum_j g_j w_j x_j,   dw_i = sum_t g_ti x_ti r_t
template <class V, bool kResidual, class In>
void rms_norm_input_gradient(const float* dout, const In* x, const float* weight, const float* rstd,
                             const float* residual, float* dx, int64_t T, int64_t C) {
  parallel_for(T, kNormRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = dout + t * C;
      const In* xr = x + t * C;
      const float gwx = reduce_sum<V>(C, [&](auto u, int64_t i) {
        using U = decltype(u);
        return U::mul(U::mul(U::load(g + i), U::load(weight + i)), load_as<U>(xr + i));
      });
      const float r = rstd[t];
      const float k = gwx * r * r * r / float(C);
      float* dxr = dx + t * C;
      for_chunks<V>(C, [&](auto u, int64_t i) {
        using U = decltype(u);
        const auto gw = U::mul(U::mul(U::load(g + i), U::load(weight + i)), U::set1(r));
        const auto d = U::fnmadd(load_as<U>(xr + i), U::set1(k), gw);
        if constexpr (kResidual) U::store(dxr + i, U::add(d, U::load(residual + t * C + i)));
        else U::store(dxr + i, d);
      });
    }
  });
}

template <class V, class In>
void rms_norm_backward_v(const float* dout, const In* x, const float* weight, const float* rstd,
                         const float* residual, float* dx, float* dweight, int64_t T, int64_t C) {
  // dweight first: dx may be dout or residual's memory
  if (dweight) {
    // Columns split over threads: each dweight entry is summed by one thread in row order.
    parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
      for (int64_t t = 0; t < T; ++t) {
        const float* g = dout + t * C;
        const In* xr = x + t * C;
        const float r = rstd[t];
        for_chunks<V>(c1 - c0, [&](auto u, int64_t j) {
          using U = decltype(u);
          const int64_t i = c0 + j;
          const auto gx = U::mul(U::load(g + i), load_as<U>(xr + i));
          U::store(dweight + i, U::fmadd(gx, U::set1(r), U::load(dweight + i)));
        });
      }
    });
  }
  if (residual) rms_norm_input_gradient<V, true>(dout, x, weight, rstd, residual, dx, T, C);
  else rms_norm_input_gradient<V, false>(dout, x, weight, rstd, nullptr, dx, T, C);
}

template <class V>
constexpr NormKernels make_norm_kernels() {
  return {&rms_norm_forward_v<V, float>, &rms_norm_backward_v<V, float>,
          &rms_norm_forward_v<V, uint16_t>, &rms_norm_backward_v<V, uint16_t>};
}

}  // namespace
}  // namespace ggtune::ops
