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

// f32 for F32 weights; bf16 for every other weight type on the avx512 tier, where
// vdpbf16ps runs at about 3x the float32 FMA rate (the weight is already rounded far
// coarser than bf16's 2^-9 relative step); f32 on the other tiers, which have no bf16
// instruction to gain from.
gemm::Precision auto_matmul_precision(GgmlType type);

// out[T, N] (= or +=) x[T, K] @ W.T
void matmul_forward(const float* x, int64_t T, int64_t K, const uint8_t* w, GgmlType type,
                    int64_t N, float* out, bool accumulate, gemm::Precision precision);

// dx[T, K] (= or +=) dy[T, N] @ W
void matmul_backward(const float* dy, int64_t T, int64_t N, const uint8_t* w, GgmlType type,
                     int64_t K, float* dx, bool accumulate, gemm::Precision precision);

}  // namespace ggtune
