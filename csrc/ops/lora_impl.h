// LoRA product kernels as templates over a vector type (see simd_vec.h); included once per tier.
#pragma once

#include <algorithm>
#include <type_traits>

#include "ops/lora.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

constexpr int64_t kLoraRowGrain = 16;
constexpr int kRankGroup = 8;  // ranks accumulated at once by outer()

// Up to kRankGroup ranks at once, each its own accumulator: independent FMA chains (one
// chain per rank would wait on the FMA latency at every step).
template <class V>
void project_v(const float* x, const float* a, float* z, int64_t T, int64_t K, int64_t r) {
  parallel_for(T, kLoraRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* xr = x + t * K;
      for (int64_t j0 = 0; j0 < r; j0 += kRankGroup) {
        const int64_t nj = std::min<int64_t>(kRankGroup, r - j0);
        typename V::T acc[kRankGroup];
        float tail[kRankGroup] = {};
        for (int64_t jj = 0; jj < nj; ++jj) acc[jj] = V::zero();
        for_chunks<V>(K, [&](auto u, int64_t i) {
          using U = decltype(u);
          const auto xv = U::load(xr + i);
          for (int64_t jj = 0; jj < nj; ++jj) {
            const auto aj = U::load(a + (j0 + jj) * K + i);
            if constexpr (std::is_same_v<U, V>) acc[jj] = V::fmadd(xv, aj, acc[jj]);
            else tail[jj] += xv * aj;
          }
        });
        for (int64_t jj = 0; jj < nj; ++jj) z[t * r + j0 + jj] = V::hsum(acc[jj]) + tail[jj];
      }
    }
  });
}

// Rank by rank into each vector of y: the r FMAs of one vector form a chain, the vectors of
// a row (and the rows) are independent, so they overlap.
template <class V>
void expand_tile_v(const float* z, int64_t ldz, const float* b, int64_t ldb, float scale, float* y,
                   int64_t ldy, int64_t m, int64_t n, int64_t r) {
  for (int64_t t = 0; t < m; ++t) {
    float* yr = y + t * ldy;
    const float* zr = z + t * ldz;
    for_chunks<V>(n, [&](auto u, int64_t i) {
      using U = decltype(u);
      auto acc = U::load(yr + i);
      for (int64_t j = 0; j < r; ++j) acc = U::fmadd(U::set1(scale * zr[j]), U::load(b + j * ldb + i), acc);
      U::store(yr + i, acc);
    });
  }
}

template <class V>
void expand_v(const float* z, const float* b, float scale, float* y, int64_t T, int64_t K,
              int64_t r) {
  parallel_for(T, kLoraRowGrain, [&](int64_t t0, int64_t t1) {
    expand_tile_v<V>(z + t0 * r, r, b, K, scale, y + t0 * K, K, t1 - t0, K, r);
  });
}

// Columns are split among threads; each column chunk sums over every row in order.
template <class V>
void outer_v(const float* z, const float* x, float scale, float* g, int64_t T, int64_t K,
             int64_t r) {
  parallel_for(K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t j0 = 0; j0 < r; j0 += kRankGroup) {
      const int64_t nj = std::min<int64_t>(kRankGroup, r - j0);
      for_chunks<V>(k1 - k0, [&](auto u, int64_t i) {
        using U = decltype(u);
        const int64_t k = k0 + i;
        typename U::T acc[kRankGroup];
        for (int64_t jj = 0; jj < nj; ++jj) acc[jj] = U::zero();
        for (int64_t t = 0; t < T; ++t) {
          const auto xv = U::load(x + t * K + k);
          for (int64_t jj = 0; jj < nj; ++jj) acc[jj] = U::fmadd(U::set1(z[t * r + j0 + jj]), xv, acc[jj]);
        }
        for (int64_t jj = 0; jj < nj; ++jj) {
          float* gj = g + (j0 + jj) * K + k;
          U::store(gj, U::fmadd(acc[jj], U::set1(scale), U::load(gj)));
        }
      });
    }
  });
}

template <class V>
constexpr LoraKernels make_lora_kernels() {
  return {&project_v<V>, &expand_v<V>, &expand_tile_v<V>, &outer_v<V>};
}

}  // namespace
}  // namespace ggtune::ops
