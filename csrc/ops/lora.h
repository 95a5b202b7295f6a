// LoRA products: one dimension is the adapter rank r (4 to 64), the others are large.
// Legend: T tokens, K a large dimension (n_in or n_out of the adapted matrix), r the rank.
//
// The general GEMM would pack (copy) the large operand to do r multiply-adds per element of it;
// these kernels stream it once. All of them are memory bound.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct LoraKernels {
  // z[T, r] = x[T, K] @ a[r, K]^T      (down-projection: x·Aᵀ; and dy·B with a = Bᵀ)
  void (*project)(const float* x, const float* a, float* z, int64_t T, int64_t K, int64_t r);
  // y[T, K] += scale * z[T, r] @ b[r, K]   (up-projection into y: s·z·Bᵀ with b = Bᵀ; dz·A)
  void (*expand)(const float* z, const float* b, float scale, float* y, int64_t T, int64_t K,
                 int64_t r);
  // The same on one tile, in the calling thread: y[i * ldy + k] += scale * sum_j
  // z[i * ldz + j] * b[j * ldb + k] for i < m, k < n (expand is this over row ranges; the
  // matmul's epilogue runs it on each output tile it has just written).
  void (*expand_tile)(const float* z, int64_t ldz, const float* b, int64_t ldb, float scale,
                      float* y, int64_t ldy, int64_t m, int64_t n, int64_t r);
  // g[r, K] += scale * z[T, r]^T @ x[T, K]   (factor gradient dA += dzᵀ·x); rows of x
  // are summed in order, so results do not depend on the thread count
  void (*outer)(const float* z, const float* x, float scale, float* g, int64_t T, int64_t K,
                int64_t r);
  // The same with x as bfloat16 bits (a layer's compact kept attention output).
  void (*outer_bf16)(const float* z, const uint16_t* x, float scale, float* g, int64_t T,
                     int64_t K, int64_t r);
  // The output side of a LoRA backward over dy[T, K] (K = n_out), in one call:
  //   dz[t * ldz + j] = scale * sum_k dy[t, k] bt[j, k]        (dz = s·dy·B, bt = Bᵀ [r, K])
  //   db[k * r + j]  += scale * sum_t z[t, j] dy[t, k]          (dB += s·dyᵀ·z, B's [K, r] layout)
  // as project and outer compute them (the same bits at any thread count).
  void (*factor_backward)(const float* dy, const float* z, const float* bt, float scale, float* dz,
                          int64_t ldz, float* db, int64_t T, int64_t K, int64_t r);
};


const LoraKernels& lora_kernels();  // the active tier's kernels

#if defined(__x86_64__)
extern const LoraKernels lora_kernels_avx2, lora_kernels_avx512;
#endif

}  // namespace ggtune::ops
