// Micro-kernels: one register-blocked MR x NR tile of C from packed strips (pack.h).
//
//   c[i * ldc + j] = alpha * sum_k A(k, i) * B(k, j) + beta * c[i * ldc + j]   (i < m, j < n)
//
// a is one A strip (width MR), b one B strip (width NR), both kcp deep; with beta == 0,
// c is not read. m <= MR and n <= NR: edge tiles are computed whole from the zero-padded
// strips and only their valid part is stored.
#pragma once

#include <cstdint>

#include "gemm/pack.h"

namespace ggtune::gemm {

// Bound on MR x NR over the tiers (edge tiles go through a buffer of this size).
constexpr int kMaxTileElems = 16 * 32;

using MicroKernel = void (*)(int64_t kcp, const void* a, const void* b, float* c, int64_t ldc,
                             int m, int n, float alpha, float beta);

// Cache blocking of the panels (elements): kc the depth, mc the A block, nc the B panel.
struct Blocking {
  int64_t kc, mc, nc;
};

struct KernelSet {
  int mr, nr;
  MicroKernel f32;        // reads f32 / f32_as_bf16 panels
  MicroKernel bf16;       // reads bf16_pairs panels; nullptr: the tier emulates bf16 with f32
  Blocking f32_blocking;
  Blocking bf16_blocking;
};

const KernelSet& kernels_scalar();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
const KernelSet& active_kernels();

}  // namespace ggtune::gemm
