#include "gemm/pack.h"

#include <algorithm>

#include "dispatch.h"

namespace ggtune::gemm {

void zero_panel_padding(const PanelLayout& layout, int64_t kc, int64_t nc, void* panel) {
  auto* bytes = static_cast<unsigned char*>(panel);
  const int64_t eb = layout.elem_bytes();
  if (nc % layout.width) {
    const int64_t last_strip = nc / layout.width;
    std::memset(bytes + last_strip * layout.strip_elems() * eb, 0, layout.strip_elems() * eb);
  }
  if (layout.kcp > kc) {  // odd kc in bf16 pairs: the second value of the last pair
    for (int64_t j = 0; j < nc; ++j)
      for (int64_t k = kc; k < layout.kcp; ++k)
        std::memset(bytes + layout.offset(k, j) * eb, 0, eb);
  }
}

namespace {

template <class Convert, class Elem>
void pack_with(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn, int64_t k_off,
               int64_t j_off, Elem* panel, Convert convert) {
  const int64_t g = layout.group(), w = layout.width;
  // One run of j's within a strip at a time; k is walked innermost when the tile is
  // contiguous along k, so reads stream either way.
  for (int64_t j = 0; j < tn;) {
    const int64_t jj = (j_off + j) % w, run = std::min(w - jj, tn - j);
    Elem* strip = panel + (j_off + j) / w * layout.strip_elems() + jj * g;
    auto put = [&](int64_t k, int64_t r) {
      const int64_t kk = k_off + k;
      strip[(kk / g) * g * w + r * g + kk % g] = convert(tile.at(k, j + r));
    };
    if (tile.rs == 1) {
      for (int64_t r = 0; r < run; ++r)
        for (int64_t k = 0; k < tk; ++k) put(k, r);
    } else {
      for (int64_t k = 0; k < tk; ++k)
        for (int64_t r = 0; r < run; ++r) put(k, r);
    }
    j += run;
  }
}

}  // namespace

void pack_tile_scalar(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                      int64_t k_off, int64_t j_off, void* panel) {
  switch (layout.format) {
    case PackFormat::f32:
      pack_with(layout, tile, tk, tn, k_off, j_off, static_cast<float*>(panel),
                [](float v) { return v; });
      break;
    case PackFormat::f32_as_bf16:
      pack_with(layout, tile, tk, tn, k_off, j_off, static_cast<float*>(panel), bf16_round);
      break;
    case PackFormat::bf16_pairs:
      pack_with(layout, tile, tk, tn, k_off, j_off, static_cast<uint16_t*>(panel), bf16_bits);
      break;
  }
}

void pack_tile(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn, int64_t k_off,
               int64_t j_off, void* panel) {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 &&
      pack_tile_avx512(layout, tile, tk, tn, k_off, j_off, panel))
    return;
#endif
  pack_tile_scalar(layout, tile, tk, tn, k_off, j_off, panel);
}

}  // namespace ggtune::gemm
