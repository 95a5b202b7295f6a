// AVX-512 packing for the layouts the avx512 kernels read. Two tile shapes cover every
// caller: contiguous along k (rows of W in the forward pass, rows of A) is transposed 16 x 16
// at a time; contiguous along j (rows of W in the backward pass, plain B) is copied row by
// row, bf16 rows interleaved into pairs.
#include <immintrin.h>

#include <algorithm>

#include "gemm/pack.h"

namespace ggtune::gemm {
namespace {

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

// Transposes 16 vectors of 16 32-bit lanes: r[i][l] -> r[l][i].
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now r[4q + p] holds, in each 128-bit lane L, row (4L + ...) pieces; gather the lanes.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// 16 k values (f32) or 16 bf16 pairs (32 k values) of column j from k on, as 16 dwords
// (zeros past tk).
inline __m512i load_k_run(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t k,
                          int64_t j) {
  const float* src = tile.p + j * tile.cs + k;
  const int64_t left = tk - k;
  switch (layout.format) {
    case PackFormat::f32:
      return _mm512_castps_si512(_mm512_maskz_loadu_ps(first_lanes(left), src));
    default: {  // bf16_pairs

      const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(left), src);
      const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(left - 16), src + 16);
      return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    }
  }
}

// tile(k, j) with tile.rs == 1: each j a contiguous run along k.
void pack_k_contiguous(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                       int64_t k_off, int64_t j_off, void* panel) {
  const int64_t g = layout.group(), w = layout.width;
  const int64_t k_per_vec = 16 * g;                  // k values one dword vector covers
  const int64_t rows_out = (tk + g - 1) / g;         // dword rows (k groups) written
  auto* dst = static_cast<uint32_t*>(panel);         // one dword = one f32 or one bf16 pair
  const int64_t strip_dwords = layout.strip_elems() * layout.elem_bytes() / 4;
  for (int64_t j = 0; j < tn;) {
    const int64_t jj = (j_off + j) % w, cnt = std::min({int64_t(16), w - jj, tn - j});
    uint32_t* strip = dst + (j_off + j) / w * strip_dwords + jj + (k_off / g) * w;
    const __mmask16 store_mask = first_lanes(cnt);
    for (int64_t k = 0; k < tk; k += k_per_vec) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < cnt ? load_k_run(layout, tile, tk, k, j + i) : _mm512_setzero_si512();
      transpose16(r);
      const int64_t rows = std::min(int64_t(16), rows_out - k / g);
      for (int64_t q = 0; q < rows; ++q)
        _mm512_mask_storeu_epi32(strip + (k / g + q) * w, store_mask, r[q]);
    }
    j += cnt;
  }
}

// tile(k, j) with tile.cs == 1: each k a contiguous run along j.
void pack_j_contiguous(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                       int64_t k_off, int64_t j_off, void* panel) {
  const int64_t w = layout.width;
  // bf16 interleave: lanes (a0, b0, a1, b1, ...) of cvtne2ps_pbh(b, a) = (a0..a15, b0..b15).
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
      19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t j = 0; j < tn;) {
    const int64_t jj = (j_off + j) % w, cnt = std::min({int64_t(16), w - jj, tn - j});
    const int64_t strip = (j_off + j) / w * layout.strip_elems();
    const __mmask16 mask = first_lanes(cnt);
    if (layout.format == PackFormat::bf16_pairs) {
      auto* dst = static_cast<uint16_t*>(panel) + strip + jj * 2;
      for (int64_t k = 0; k < tk; k += 2) {
        const __m512 a = _mm512_maskz_loadu_ps(mask, tile.p + k * tile.rs + j);
        const __m512 b = k + 1 < tk ? _mm512_maskz_loadu_ps(mask, tile.p + (k + 1) * tile.rs + j)
                                    : _mm512_setzero_ps();
        const __m512i pairs =
            _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        _mm512_mask_storeu_epi32(dst + (k_off + k) * w, mask, pairs);
      }
    } else {
      auto* dst = static_cast<float*>(panel) + strip + jj;
      for (int64_t k = 0; k < tk; ++k)
        _mm512_mask_storeu_ps(dst + (k_off + k) * w, mask,
                              _mm512_maskz_loadu_ps(mask, tile.p + k * tile.rs + j));
    }
    j += cnt;
  }
}

}  // namespace

bool pack_tile_avx512(const PanelLayout& layout, FloatView tile, int64_t tk, int64_t tn,
                      int64_t k_off, int64_t j_off, void* panel) {
  // The avx512 kernels read f32 and bf16 pairs; bf16 is emulated only on other tiers.
  if (layout.format == PackFormat::f32_as_bf16 || k_off % layout.group() != 0) return false;
  if (tile.rs == 1) {
    pack_k_contiguous(layout, tile, tk, tn, k_off, j_off, panel);
    return true;
  }
  if (tile.cs == 1) {
    pack_j_contiguous(layout, tile, tk, tn, k_off, j_off, panel);
    return true;
  }
  return false;
}

}  // namespace ggtune::gemm
