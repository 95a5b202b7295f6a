// Matmul with a frozen GGUF weight, forward and backward, on the GEMM engine.
//
// Shapes: T tokens, K in-features, N out-features. W[N, K] is kept as its GGUF bytes,
// N rows of row_bytes(type, K) bytes; it is dequantized one tile at a time into the
// engine's packed panels, never as a whole.
#pragma once

#include <cstdint>

#include "gemm/gemm.h"
#include "quant/types.h"

namespace ggtune {

// The precision "auto" picks: int8 (gemm/qgemm.h: activations rounded to Q8 per 32 values,
// weights as their own integer codes, vpdpbusd) for quantized weights on the avx512 tier, where
// it runs at about twice the float32 rate; f32 for float weights and on the other tiers (which
// have no fast integer dot product). bf16 is not picked: on the machines ggtune is tuned on
// (AVX512-BF16 Xeons under KVM) a zmm vdpbf16ps retires about 2.2x fewer flops than zmm
// vfmadd231ps (~77 vs ~170 GFLOP/s per core), so the bf16 GEMM runs at ~0.55x the f32 one.
gemm::Precision auto_matmul_precision(GgmlType type);

// A LoRA up-projection added to a product's output: out[T, N] += scale * z[T, r] @ b[r, N]
// (forward: z = x·Aᵀ, b = Bᵀ; backward: z = dz, b = A), z and b contiguous. The engines add it
// to each output tile they have just computed (gemm/epilogue.h), with the float ops of
// ops::LoraKernels::expand run after the product.
struct LoraTerm {
  const float* z;  // [T, r]
  const float* b;  // [r, N]
  int64_t r;
  float scale;
};

// out[T, N] (= or +=) x[T, K] @ W.T (+ the LoRA term when given). int8 with T <=
// gemm::kGemvMaxRows and a type with u8 codes runs the matrix-vector path (gemm/qgemv.h: W's
// blocks read in place; the LoRA term is added after), else the GEMM.
void matmul_forward(const float* x, int64_t T, int64_t K, const uint8_t* w, GgmlType type,
                    int64_t N, float* out, bool accumulate, gemm::Precision precision,
                    const LoraTerm* lora = nullptr);

// One weight of matmul_forward_many: W[n, K] of `type`, out[T, n].
struct ManyWeight {
  const uint8_t* w;
  GgmlType type;
  int64_t n;
  float* out;
};

// out_i[T, n_i] (= or +=) x[T, K] @ W_i.T for weights that share x (q/k/v, gate/up). At the
// decode sizes of the int8 path (T <= gemm::kGemvMaxRows) all of them run in one parallel
// region (gemm/qgemv.h); otherwise one matmul_forward each.
void matmul_forward_many(const float* x, int64_t T, int64_t K, const ManyWeight* weights,
                         int64_t count, bool accumulate, gemm::Precision precision);

// dx[T, K] (= or +=) dy[T, N] @ W (+ the LoRA term when given, its b [r, K])
void matmul_backward(const float* dy, int64_t T, int64_t N, const uint8_t* w, GgmlType type,
                     int64_t K, float* dx, bool accumulate, gemm::Precision precision,
                     const LoraTerm* lora = nullptr);

}  // namespace ggtune
