#include "ops/convert.h"

#include "dispatch.h"
#include "parallel.h"
#include "quant/blocks.h"

namespace ggtune::ops {

namespace {

// The reference: one element at a time through fp32_to_bf16.
void f32_to_bf16_scalar(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(x[i]);
}

constexpr ConvertKernels convert_kernels_scalar = {&f32_to_bf16_scalar};

// Below this many elements per thread, starting threads costs more than it saves.
constexpr int64_t kConvertGrain = 1 << 16;

}  // namespace

// AVX2 has no variant of its own: the scalar loop (the compiler vectorizes it) serves that tier.
const ConvertKernels& convert_kernels() {
  return active_table(convert_kernels_scalar, GGTUNE_X86(&convert_kernels_scalar),
                      GGTUNE_X86(&convert_kernels_avx512));
}

void f32_to_bf16(const float* x, uint16_t* out, int64_t n) {
  const auto kernel = convert_kernels().f32_to_bf16;
  parallel_for(n, kConvertGrain, [&](int64_t begin, int64_t end) { kernel(x + begin, out + begin, end - begin); });
}

}  // namespace ggtune::ops
