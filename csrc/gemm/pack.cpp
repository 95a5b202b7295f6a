#include "gemm/pack.h"

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
  // Walk the tile along its contiguous axis so reads stream.
  if (tile.rs == 1) {
    for (int64_t j = 0; j < tn; ++j)
      for (int64_t k = 0; k < tk; ++k)
        panel[layout.offset(k_off + k, j_off + j)] = convert(tile.at(k, j));
  } else {
    for (int64_t k = 0; k < tk; ++k)
      for (int64_t j = 0; j < tn; ++j)
        panel[layout.offset(k_off + k, j_off + j)] = convert(tile.at(k, j));
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
