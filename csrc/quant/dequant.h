// Dequantization of GGUF rows to float32, bit-exact with gguf.quants.dequantize on every
// tier. The matmul engine packs weight tiles with dequantize_row, so a tile costs one call.
#pragma once

#include <cstdint>

#include "quant/types.h"

namespace ggtune {

// src: row_bytes(type, n) bytes; dst: float32 [n]. n must be a multiple of the type's block
// size (callers check it). Throws std::invalid_argument for a type without type_traits().
// Runs on active_isa().
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// The portable reference every SIMD tier is tested against.
void dequantize_row_scalar(GgmlType type, const void* src, float* dst, int64_t n);

// Per-tier variants: return false for a type the tier has no kernel for (the caller then
// runs the scalar reference). Only built on x86-64.
bool dequantize_row_avx2(GgmlType type, const void* src, float* dst, int64_t n);
bool dequantize_row_avx512(GgmlType type, const void* src, float* dst, int64_t n);

}  // namespace ggtune
