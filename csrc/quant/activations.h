// Activations rounded the way ggml's CPU backend rounds them before a dot product with a
// weight of a given type (its "vec_dot_type"): Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1,
// Q8_K for the K-quants, F16 for F16, BF16 for BF16, untouched for F32.
//
// ggtune computes exact products by default; this rounding is the "ggml" precision, which
// reproduces llama.cpp's numbers (e.g. perplexities) where a user wants them identical.
#pragma once

#include <cstdint>

#include "quant/types.h"

namespace ggtune {

// Block size the rounding works in for activations meeting `weight_type` (1 for float types).
int64_t activation_block(GgmlType weight_type);

// out[i] = the value ggml's dot product sees for x[i]; n a multiple of activation_block().
// out may alias x.
void round_activations_like_ggml(GgmlType weight_type, const float* x, float* out, int64_t n);

}  // namespace ggtune
