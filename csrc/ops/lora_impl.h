// LoRA product kernels as templates over a vector type (see simd_vec.h); included once per tier.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>

#include "ops/lora.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

constexpr int64_t kLoraRowGrain = 16;
// Register tiles of project and outer: kTileRanks ranks of kTileRows rows (project) or of
// kTileVectors column vectors (outer), each pair its own accumulator: enough independent FMA
// chains to hide the FMA latency (one chain per rank stalled on it at r = 4), and each loaded
// vector feeds kTileRanks FMAs. 16 accumulators fit AVX-512's 32 registers; AVX2's 16 take 8.
constexpr int kTileRanks = 4;
template <class V>
constexpr int kTileRows = V::W == 8 ? 2 : 4;
template <class V>
constexpr int kTileVectors = V::W == 8 ? 2 : 4;

// Calls body(std::integral_constant<int, J>) with J = n, for 1 <= n <= kTileRanks: a rank count
// known at run time as a template argument (the tile loops unroll over it).
template <class Body>
inline void with_ranks(int64_t n, Body&& body) {
  static_assert(kTileRanks == 4, "one case per rank count");
  switch (n) {
    case 1: body(std::integral_constant<int, 1>{}); break;
    case 2: body(std::integral_constant<int, 2>{}); break;
    case 3: body(std::integral_constant<int, 3>{}); break;
    default: body(std::integral_constant<int, 4>{}); break;
  }
}

// z[t * ldz + j0 + j] = scale * x[t] . a[j0 + j] for R rows t of x (row stride K), J ranks. Each
// entry is the same sum whatever R is (its own accumulator, the same chunks in the same order).
template <class V, int R, int J>
inline void project_tile(const float* x, const float* a, int64_t K, int64_t j0, float scale, float* z,
                         int64_t ldz) {
  typename V::T acc[R][J];
  float tail[R][J] = {};
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < J; ++j) acc[i][j] = V::zero();
  for_chunks<V>(K, [&](auto u, int64_t k) {
    using U = decltype(u);
    typename U::T xv[R];
    for (int i = 0; i < R; ++i) xv[i] = U::load(x + i * K + k);
    for (int j = 0; j < J; ++j) {
      const auto aj = U::load(a + (j0 + j) * K + k);
      for (int i = 0; i < R; ++i) {
        // the tail fused explicitly: left to contraction, it rounded differently in tiles of
        // different R, and a row's bits depended on the thread split
        if constexpr (std::is_same_v<U, V>) acc[i][j] = V::fmadd(xv[i], aj, acc[i][j]);
        else tail[i][j] = std::fma(xv[i], aj, tail[i][j]);
      }
    }
  });
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < J; ++j) z[i * ldz + j0 + j] = (V::hsum(acc[i][j]) + tail[i][j]) * scale;
}

// z[t * ldz + j] = scale * x[t] . a[j] for t < T, j < r; rows split over threads.
template <class V>
void project_rows(const float* x, const float* a, float scale, float* z, int64_t ldz, int64_t T,
                  int64_t K, int64_t r) {
  constexpr int R = kTileRows<V>;
  parallel_for(T, kLoraRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t j0 = 0; j0 < r; j0 += kTileRanks)
      with_ranks(r - j0, [&](auto ranks) {
        constexpr int J = decltype(ranks)::value;
        int64_t t = t0;
        for (; t + R <= t1; t += R) project_tile<V, R, J>(x + t * K, a, K, j0, scale, z + t * ldz, ldz);
        for (; t < t1; ++t) project_tile<V, 1, J>(x + t * K, a, K, j0, scale, z + t * ldz, ldz);
      });
  });
}

template <class V>
void project_v(const float* x, const float* a, float* z, int64_t T, int64_t K, int64_t r) {
  project_rows<V>(x, a, 1.0f, z, r, T, K, r);
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

// g[(j0 + j) * K + k + c W] += scale * sum_t z[t * r + j0 + j] x[t * K + k + c W] for J ranks and
// C vectors of U: every row in order, so an entry is the same sum whatever C is.
template <class U, int C, int J, class In>
inline void outer_tile(const float* z, int64_t r, int64_t j0, const In* x, int64_t T, int64_t K,
                       int64_t k, float scale, float* g) {
  typename U::T acc[C][J];
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) acc[c][j] = U::zero();
  for (int64_t t = 0; t < T; ++t) {
    typename U::T xv[C];
    for (int c = 0; c < C; ++c) xv[c] = load_as<U>(x + t * K + k + c * U::W);
    for (int j = 0; j < J; ++j) {
      const auto zj = U::set1(z[t * r + j0 + j]);
      for (int c = 0; c < C; ++c) acc[c][j] = U::fmadd(zj, xv[c], acc[c][j]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) {
      float* gj = g + (j0 + j) * K + k + c * U::W;
      U::store(gj, U::fmadd(acc[c][j], U::set1(scale), U::load(gj)));
    }
}

// Columns are split among threads; each column sums over every row in order.
template <class V, class In>
void outer_v(const float* z, const In* x, float scale, float* g, int64_t T, int64_t K,
             int64_t r) {
  constexpr int C = kTileVectors<V>;
  parallel_for(K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t j0 = 0; j0 < r; j0 += kTileRanks)
      with_ranks(r - j0, [&](auto ranks) {
        constexpr int J = decltype(ranks)::value;
        int64_t k = k0;
        for (; k + C * V::W <= k1; k += C * V::W) outer_tile<V, C, J>(z, r, j0, x, T, K, k, scale, g);
        for_chunks<V>(k1 - k, [&](auto u, int64_t i) {
          outer_tile<decltype(u), 1, J>(z, r, j0, x, T, K, k + i, scale, g);
        });
      });
  });
}

// dz = s·dy·B straight into its columns of the stacked dz, then dBᵀ = s·zᵀ·dy by outer into a
// zeroed scratch, added into db transposed: one call instead of a numpy zeros, a transpose and
// a strided copy per adapter.
template <class V>
void factor_backward_v(const float* dy, const float* z, const float* bt, float scale, float* dz,
                       int64_t ldz, float* db, int64_t T, int64_t K, int64_t r) {
  project_rows<V>(dy, bt, scale, dz, ldz, T, K, r);
  std::unique_ptr<float[]> db_t(new float[r * K]());  // [r, K]
  outer_v<V, float>(z, dy, scale, db_t.get(), T, K, r);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < r; ++j) db[k * r + j] += db_t[j * K + k];
}

template <class V>
constexpr LoraKernels make_lora_kernels() {
  return {&project_v<V>,          &expand_v<V>,           &expand_tile_v<V>,
          &outer_v<V, float>, &outer_v<V, uint16_t>, &factor_backward_v<V>};
}

}  // namespace
}  // namespace ggtune::ops
