// f32 -> bf16 on 16 lanes at a time: Avx512::store_bf16 (simd_vec.h), the reference's integer
// rounding (vcvtneps2bf16 would flush denormals to zero, which the reference keeps).
#include "ops/convert.h"
#include "ops/simd_vec.h"

namespace ggtune::ops {
namespace {

void f32_to_bf16_avx512(const float* x, uint16_t* out, int64_t n) {
  for_chunks<Avx512>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    U::store_bf16(out + i, U::load(x + i));
  });
}

}  // namespace

const ConvertKernels convert_kernels_avx512 = {&f32_to_bf16_avx512};

}  // namespace ggtune::ops
