// Packed panels: the layout the micro-kernels read, and the copies into it.
//
// A panel holds a kc x nc tile of an operand (k the reduced index, j the output row or
// column) cut into strips of `width` j's (MR for A, NR for B). Within a strip, k runs
// outermost in groups of g (g = 1 for float32, g = 2 for bfloat16 pairs, the operand
// layout of vdpbf16ps), then j, then the g values of the group:
//
//   offset(k, j) = (j / width) * kcp * width + (k / g) * g * width + (j % width) * g + k % g
//
// kcp is kc rounded up to g. Entries past kc or past nc are zero, so kernels always run
// full strips and their extra products add nothing.
#pragma once

#include <cstdint>
#include <cstring>

#include "gemm/gemm.h"
#include "gemm/scratch.h"

namespace ggtune::gemm {

enum class PackFormat {
  f32,          // float32 as given
  f32_as_bf16,  // float32 holding bf16-rounded values (bf16 precision without vdpbf16ps)
  bf16_pairs,   // uint16 bfloat16, g = 2
};

struct PanelLayout {
  PackFormat format;
  int64_t width;  // strip width (MR or NR)
  int64_t kcp;    // k extent, padded to the group size
  int64_t group() const { return format == PackFormat::bf16_pairs ? 2 : 1; }
  int64_t elem_bytes() const { return format == PackFormat::bf16_pairs ? 2 : 4; }
  int64_t strip_elems() const { return kcp * width; }
  int64_t offset(int64_t k, int64_t j) const {
    const int64_t g = group();
    return (j / width) * strip_elems() + (k / g) * g * width + (j % width) * g + k % g;
  }
};

// float32 -> bfloat16 bits, round to nearest even, as VCVTNEPS2BF16 does (subnormals flush
// to zero, NaN stays NaN).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_round(float f) {
  const uint32_t u = static_cast<uint32_t>(bf16_bits(f)) << 16;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// Zeroes the padding of a kc x nc panel (the partial last strip, the odd k of bf16 pairs).
void zero_panel_padding(const PanelLayout& layout, int64_t kc, int64_t nc, void* panel);

// Copies tile[0:tk, 0:tn] (tile(k, j)) to panel entries (k_off + k, j_off + j).
// Runs on the active tier; pack_tile_scalar is the reference.
void pack_tile(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn, int64_t k_off,
               int64_t j_off, void* panel);
void pack_tile_scalar(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                      int64_t k_off, int64_t j_off, void* panel);
// Fast paths for the common layouts; false when the case is not covered.
bool pack_tile_avx512(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                      int64_t k_off, int64_t j_off, void* panel);

}  // namespace ggtune::gemm
