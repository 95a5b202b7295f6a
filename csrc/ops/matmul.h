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

// The precision "auto" picks: f32 for every weight type and tier. bf16 was meant to be the
// fast path on avx512 (vdpbf16ps), but on the machines ggtune is tuned on (AVX512-BF16 Xeons
// under KVM) a zmm vdpbf16ps retires about 2.2x fewer flops than zmm vfmadd231ps (measured
// with 24 independent accumulators: ~77 vs ~170 GFLOP/s per core), so the whole bf16
// GEMM runs at ~0.55x the f32 one. bf16 stays available on request; revisit if a CPU runs
// vdpbf16ps at the FMA rate or better.
gemm::Precision auto_matmul_precision(GgmlType type);

// out[T, N] (= or +=) x[T, K] @ W.T
void matmul_forward(const float* x, int64_t T, int64_t K, const uint8_t* w, GgmlType type,
                    int64_t N, float* out, bool accumulate, gemm::Precision precision);

// dx[T, K] (= or +=) dy[T, N] @ W
void matmul_backward(const float* dy, int64_t T, int64_t N, const uint8_t* w, GgmlType type,
                     int64_t K, float* dx, bool accumulate, gemm::Precision precision);

}  // namespace ggtune
