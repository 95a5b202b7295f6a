// f32 -> bf16 with AVX-512 integer arithmetic, the reference's rounding on 16 lanes at a time
// (vcvtneps2bf16 would flush denormals to zero, which the reference keeps).
#include <immintrin.h>

#include "ops/convert.h"
#include "quant/blocks.h"

namespace ggtune::ops {
namespace {

// bits + 0x7fff + (bit 16 of bits), shifted down: round to nearest even; NaN keeps its top
// bits with the quiet bit set.
inline __m256i bf16x16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

void f32_to_bf16_avx512(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bf16x16(_mm512_loadu_ps(x + i)));
  for (; i < n; ++i) out[i] = fp32_to_bf16(x[i]);
}

}  // namespace

const ConvertKernels convert_kernels_avx512 = {&f32_to_bf16_avx512};

}  // namespace ggtune::ops
