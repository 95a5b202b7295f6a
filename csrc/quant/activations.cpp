#include "quant/activations.h"

#include <cmath>
#include <stdexcept>

#include "quant/blocks.h"

namespace ggtune {
namespace {

// Q8_0 and Q8_1 as quantize_row_q8_0/q8_1 on x86: d = amax/127 stored as fp16, q = x·(127/amax)
// rounded to nearest even. The value seen is q·fp16(d).
void round_q8_32(const float* x, float* out) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = fp16_to_fp32(fp32_to_fp16(amax / 127.0f));
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  for (int i = 0; i < 32; ++i) out[i] = std::nearbyint(x[i] * id) * d;
}

// Q8_K as quantize_row_q8_K: the signed value of largest magnitude maps to -127 (so the other
// side may reach 128, clamped to 127); d = 1/iscale stays float32.
void round_q8_256(const float* x, float* out) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < 256; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax == 0.0f) {
    for (int i = 0; i < 256; ++i) out[i] = 0.0f;
    return;
  }
  const float iscale = -127.0f / max;
  const float d = 1.0f / iscale;
  for (int i = 0; i < 256; ++i) out[i] = std::fmin(127.0f, std::nearbyint(iscale * x[i])) * d;
}

enum class DotType { f32, f16, bf16, q8_32, q8_k };

DotType dot_type(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32: return DotType::f32;
    case GgmlType::F16: return DotType::f16;
    case GgmlType::BF16: return DotType::bf16;
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0:
    case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q8_1: return DotType::q8_32;
    case GgmlType::Q2_K: case GgmlType::Q3_K: case GgmlType::Q4_K: case GgmlType::Q5_K:
    case GgmlType::Q6_K: return DotType::q8_k;
  }
  throw std::invalid_argument("unsupported weight type");
}

}  // namespace

int64_t activation_block(GgmlType weight_type) {
  switch (dot_type(weight_type)) {
    case DotType::q8_32: return 32;
    case DotType::q8_k: return 256;
    default: return 1;
  }
}

void round_activations_like_ggml(GgmlType weight_type, const float* x, float* out, int64_t n) {
  switch (dot_type(weight_type)) {
    case DotType::f32:
      for (int64_t i = 0; i < n; ++i) out[i] = x[i];
      break;
    case DotType::f16:
      for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
      break;
    case DotType::bf16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
      break;
    case DotType::q8_32:
      for (int64_t i = 0; i < n; i += 32) round_q8_32(x + i, out + i);
      break;
    case DotType::q8_k:
      for (int64_t i = 0; i < n; i += 256) round_q8_256(x + i, out + i);
      break;
  }
}

}  // namespace ggtune
