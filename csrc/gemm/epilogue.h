// A rank-r update both GEMM engines add to C while its tiles are still in registers or L1:
//   C[i, j] += scale * sum_k u[i * ldu + k] * v[k * ldv + j]
// (the LoRA up-projection y += s·z·Bᵀ of ops/matmul.cpp, u = z, v = Bᵀ). Added after the
// product, rank by rank with one FMA each, as ops::LoraKernels::expand adds it to a finished
// output; fused, it saves that pass over C, and no tile is written by one core and read back by
// another.
#pragma once

#include <cstdint>

namespace ggtune::gemm {

struct LowRankUpdate {
  const float* u;  // [M, r], row stride ldu
  int64_t ldu;
  const float* v;  // [r, N], row stride ldv
  int64_t ldv;
  int64_t r;
  float scale;

  // The update of the tile whose first element is C[row, col].
  LowRankUpdate at(int64_t row, int64_t col) const {
    return {u + row * ldu, ldu, v + col, ldv, r, scale};
  }
};

// The f32 engine's hook (its micro-kernels have no update of their own): called once per
// output tile, after its last K panel, by the thread that computed it; c points at C[row, col],
// the tile is m x n with row stride ldc.
struct TileEpilogue {
  void (*apply)(const void* ctx, float* c, int64_t ldc, int64_t row, int64_t col, int64_t m,
                int64_t n);
  const void* ctx;

  void operator()(float* c, int64_t ldc, int64_t row, int64_t col, int64_t m, int64_t n) const {
    apply(ctx, c, ldc, row, col, m, n);
  }
};

}  // namespace ggtune::gemm
