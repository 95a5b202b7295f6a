// Weights as unsigned integer codes with an affine map per 32 values, the B operand form of
// the int8 GEMM (gemm/qgemm.h):  x = d * u + c,  u uint8.
//
// Types whose blocks already are this (exactly, no rounding): Q4_0 (u = q, c = -8 d),
// Q4_1 (u = q, c = m), Q5_0 (c = -16 d), Q5_1, Q8_0 (u = q + 128, c = -128 d), and the K-quants
// with sub-blocks of 32: Q4_K and Q5_K (d = d * scale_j, c = -dmin * min_j).
#pragma once

#include <cstdint>

#include "quant/types.h"

namespace ggtune {

bool has_u8_codes(GgmlType type);

// n elements of a row (n a multiple of the type's block size) -> codes u[n], d and c [n / 32].
// Throws std::invalid_argument for a type without u8 codes. Runs on active_isa().
void unpack_row_u8(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c);
void unpack_row_u8_scalar(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c);
// The 32-block types; false for the others (the caller runs the scalar reference).
bool unpack_row_u8_avx512(GgmlType type, const void* src, int64_t n, uint8_t* u, float* d, float* c);

}  // namespace ggtune
