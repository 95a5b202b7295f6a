#include <immintrin.h>

#include "gemm/pack.h"

namespace ggtune::gemm {

bool pack_tile_avx512(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                      int64_t k_off, int64_t j_off, void* panel) {
  return false;
}

}  // namespace ggtune::gemm
