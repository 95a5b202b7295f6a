// Float32 -> bfloat16 of a flat array: the compact form of the activations a training layer
// keeps for its backward (python/ggtune/block.py). Round to nearest even, NaN stays NaN (quiet):
// bit-exact with quant/blocks.h's fp32_to_bf16, the scalar reference. (The way back, bf16 ->
// f32, is exact and is quant/dequant.h's dequantize_row for GGUF's BF16 type.)
// Legend: n elements of a flat array.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct ConvertKernels {
  // out[i] = bf16 bits of x[i]; one thread's range (the caller splits the work).
  void (*f32_to_bf16)(const float* x /*[n]*/, uint16_t* out /*[n]*/, int64_t n);
};

const ConvertKernels& convert_kernels();  // the active tier's kernels

// The active tier's f32_to_bf16 over threads, in static ranges.
void f32_to_bf16(const float* x /*[n]*/, uint16_t* out /*[n]*/, int64_t n);

#if defined(__x86_64__)
extern const ConvertKernels convert_kernels_avx512;
#endif

}  // namespace ggtune::ops
