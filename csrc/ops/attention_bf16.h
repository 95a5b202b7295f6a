// The bf16 tile products of attention (the Bf16*Tiles policies of attention_impl.h), for the
// avx512 tier: operands rounded to bfloat16 (round to nearest even), products accumulated in
// float32 by vdpbf16ps, which adds a0 b0 + a1 b1 of two bf16 pairs into one float32 lane: about
// twice the float32 FMA's rate on Zen 4 (`_core.peak_rate`). A product's reduction index runs
// over pairs, so each operand is stored as pairs along it: "words" of two bf16, the first in the
// low half, an odd count padded with a zero. Operands read by many tiles are converted once
// per call; a tile's own (Q rows, P, dS, one key block's K and V) per task.
#pragma once

#if defined(__AVX512BF16__)

#include "ops/attention_impl.h"
#include "transpose_avx512.h"

namespace ggtune::ops {
namespace {

using Word = uint32_t;  // two bf16

inline __mmask16 lanes_below(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// dst[i] = (src[2i], src[2i+1]) for i < ceil(n / 2): a row as pairs along itself.
inline void pairs_along_row(const float* src, int64_t n, Word* dst) {
  for (int64_t i = 0; i < n; i += 32) {
    const __m512 lo = _mm512_maskz_loadu_ps(lanes_below(n - i), src + i);
    const __m512 hi = _mm512_maskz_loadu_ps(lanes_below(n - i - 16), src + i + 16);
    _mm512_mask_storeu_epi32(dst + i / 2, lanes_below(ceil_div(n - i, 2)),
                             (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// dst[i] = (a[i], b[i]) for i < n: two rows as pairs across them (b null: zeros, the pad).
inline void pairs_across_rows(const float* a, const float* b, int64_t n, Word* dst) {
  // cvtne2ps_pbh(y, x) holds x0..x15 then y0..y15; this picks x0, y0, x1, y1, ...
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
      19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_below(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, a + i);
    const __m512 y = b ? _mm512_maskz_loadu_ps(m, b + i) : _mm512_setzero_ps();
    _mm512_mask_storeu_epi32(dst + i, m,
                             _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(y, x)));
  }
}

// dst[b,h,e,l - l0] = (src[b,l,h,2e], src[b,l,h,2e+1]) for l in [l0, L): every head as a
// [ceil(D/2), L - l0] word matrix with rows of `ld` words (transpose_heads in pairs), the
// row-major right operand of a product reducing over D.
inline void pairs_transposed_heads(const float* src /*[B,L,H,D]*/, int64_t B, int64_t L, int64_t H,
                                   int64_t D, int64_t l0, int64_t ld, Word* dst) {
  const int64_t D2 = ceil_div(D, 2);
  parallel_for_each(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    Word* head = dst + bh * D2 * ld;
    static_assert(kTransposeRows == 16, "one gather of 16 lanes per block");
    Scratch<Word> rows(kTransposeRows * D2);
    for (int64_t lb = l0; lb < L; lb += kTransposeRows) {
      const int64_t le = std::min(lb + kTransposeRows, L);
      for (int64_t l = lb; l < le; ++l)
        pairs_along_row(src + ((b * L + l) * H + h) * D, D, rows.p + (l - lb) * D2);
      // word e of the block's rows: 8 words at a time through a register transpose (rows past
      // le hold stale words, never stored), the rest by one gather each (a scalar copy per word
      // measured 14% of the backward at SmolLM2's shapes)
      const __mmask16 m = lanes_below(le - lb);
      int64_t e = 0;
      for (; e + 8 <= D2; e += 8) {
        __m512i words[8];
        transpose_16x8_dwords(rows.p + e, D2 * int64_t(sizeof(Word)), words);
        for (int w = 0; w < 8; ++w) _mm512_mask_storeu_epi32(head + (e + w) * ld + (lb - l0), m, words[w]);
      }
      const __m512i at = _mm512_mullo_epi32(
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
          _mm512_set1_epi32(int(D2)));
      for (; e < D2; ++e)
        _mm512_mask_storeu_epi32(head + e * ld + (lb - l0), m,
                                 _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, at,
                                                             rows.p + e, 4));
    }
  });
}

// dst[b,h,i,d] = (src[b,l0+2i,h,d], src[b,l0+2i+1,h,d]) for i < ceil((L - l0) / 2): every head
// as pairs of consecutive positions, the right operand of a product reducing over positions.
inline void row_pairs_of_heads(const float* src /*[B,L,H,D]*/, int64_t B, int64_t L, int64_t H,
                               int64_t D, int64_t l0, Word* dst) {
  const int64_t n_pairs = ceil_div(L - l0, 2);
  parallel_for_each(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    for (int64_t i = 0; i < n_pairs; ++i) {
      const int64_t l = l0 + 2 * i;
      const float* row = src + ((b * L + l) * H + h) * D;
      pairs_across_rows(row, l + 1 < L ? row + H * D : nullptr, D, dst + (bh * n_pairs + i) * D);
    }
  });
}

// One register tile of c (R rows x NV vectors of 16 columns, the last masked by `last`):
//   c[m][n] = (accumulate ? c[m][n] : 0) + alpha * sum_k a(m, k) . b[k][n],  k < K2 word rows,
// a(m, k) = a[m*a_rs + k*a_ks] broadcast, "." the pair dot of vdpbf16ps.
template <int R, int NV>
inline void bf16_tile(const Word* a, int64_t a_rs, int64_t a_ks, const Word* b, int64_t ldb,
                      int64_t K2, float* c, int64_t ldc, __mmask16 last, float alpha,
                      bool accumulate) {
  // Every loop over r and j unrolled: an accumulator indexed at run time anywhere (the store
  // loop) keeps the whole array in memory, a store per vdpbf16ps (measured 2x slower).
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    __m512bh bk[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j)
      bk[j] = (__m512bh)_mm512_maskz_loadu_epi32(j == NV - 1 ? last : __mmask16(0xffff),
                                                  b + k * ldb + 16 * j);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh ark = (__m512bh)_mm512_set1_epi32(int(a[r * a_rs + k * a_ks]));
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], ark, bk[j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const __mmask16 m = j == NV - 1 ? last : __mmask16(0xffff);
      float* out = c + r * ldc + 16 * j;
      __m512 y = _mm512_mul_ps(acc[r][j], _mm512_set1_ps(alpha));
      if (accumulate) y = _mm512_add_ps(_mm512_maskz_loadu_ps(m, out), y);
      _mm512_mask_storeu_ps(out, m, y);
    }
}

template <int R>
inline void bf16_row_group(int64_t N, int64_t K2, const Word* a, int64_t a_rs, int64_t a_ks,
                           const Word* b, int64_t ldb, float* c, int64_t ldc, float alpha,
                           bool accumulate) {
  int64_t n = 0;
  for (; n + 32 <= N; n += 32)
    bf16_tile<R, 2>(a, a_rs, a_ks, b + n, ldb, K2, c + n, ldc, 0xffff, alpha, accumulate);
  for (; n < N; n += 16)
    bf16_tile<R, 1>(a, a_rs, a_ks, b + n, ldb, K2, c + n, ldc, lanes_below(N - n), alpha,
                    accumulate);
}

// gemm_block over word operands: c [M, N] (+)= alpha * a [M, K2 words] . b [K2 words, N].
inline void gemm_bf16_block(int64_t M, int64_t N, int64_t K2, const Word* a, int64_t a_rs,
                            int64_t a_ks, const Word* b, int64_t ldb, float* c, int64_t ldc,
                            float alpha, bool accumulate) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8)
    bf16_row_group<8>(N, K2, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha, accumulate);
  for (; m + 4 <= M; m += 4)
    bf16_row_group<4>(N, K2, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha, accumulate);
  for (; m < M; ++m)
    bf16_row_group<1>(N, K2, a + m * a_rs, a_rs, a_ks, b, ldb, c + m * ldc, ldc, alpha, accumulate);
}

// Forward: K as pairs along D (transposed: [B,Hkv,D2,ld_kp]) and V as pairs of keys
// ([B,Hkv,ceil((Skv - k0)/2),D]), both from key k0 on; a task's Q rows and P as pairs along
// their rows.
struct Bf16ForwardTiles {
  static constexpr int64_t kKeyAlign = 2;  // key tiles start on V's pairs
  const AttentionShape& s;
  int64_t k0, D2, ld_kp, n_pairs;
  Scratch<Word> k_pairs, v_pairs;

  Bf16ForwardTiles(const float* k, const float* v, const AttentionShape& s_, int64_t k0_)
      : s(s_), k0(k0_), D2(ceil_div(s_.D, 2)), ld_kp(transposed_ld(s_.Skv - k0_)),
        n_pairs(ceil_div(s_.Skv - k0_, 2)), k_pairs(s_.B * s_.Hkv * D2 * ld_kp),
        v_pairs(s_.B * s_.Hkv * n_pairs * s_.D) {
    pairs_transposed_heads(k, s.B, s.Skv, s.Hkv, s.D, k0, ld_kp, k_pairs.p);
    row_pairs_of_heads(v, s.B, s.Skv, s.Hkv, s.D, k0, v_pairs.p);
  }

  struct Task {
    const Bf16ForwardTiles& t;
    const Word *kp_head, *vp_head;
    int64_t nr;
    Scratch<Word> q_words, p_words;  // [nr, D2], [nr, kKeyBlock / 2]
    Task(const Bf16ForwardTiles& t_, const float* q_tile, int64_t nr_, int64_t b, int64_t hk)
        : t(t_), kp_head(t_.k_pairs.p + (b * t_.s.Hkv + hk) * t_.D2 * t_.ld_kp),
          vp_head(t_.v_pairs.p + (b * t_.s.Hkv + hk) * t_.n_pairs * t_.s.D), nr(nr_),
          q_words(nr_ * t_.D2), p_words(nr_ * kKeyBlock / 2) {
      for (int64_t r = 0; r < nr; ++r)
        pairs_along_row(q_tile + r * t.s.Hq * t.s.D, t.s.D, q_words.p + r * t.D2);
    }
    void scores(int64_t r0, int64_t r1, int64_t j0, int64_t nc, float scale, float* scores) const {
      gemm_bf16_block(r1 - r0, nc, t.D2, q_words.p + r0 * t.D2, t.D2, 1, kp_head + (j0 - t.k0),
                      t.ld_kp, scores + r0 * kKeyBlock, kKeyBlock, scale, false);
    }
    void add_pv(int64_t r0, int64_t r1, const float* p, int64_t j0, int64_t nc, float* out_tile) {
      constexpr int64_t half = kKeyBlock / 2;
      for (int64_t r = r0; r < r1; ++r) pairs_along_row(p + r * kKeyBlock, nc, p_words.p + r * half);
      const int64_t ldq = t.s.Hq * t.s.D;
      gemm_bf16_block(r1 - r0, t.s.D, ceil_div(nc, 2), p_words.p + r0 * half, half, 1,
                      vp_head + (j0 - t.k0) / 2 * t.s.D, t.s.D, out_tile + r0 * ldq, ldq, 1.0f,
                      true);
    }
  };
};

// Backward: Q and dO both as pairs along D (transposed, [B,Hq,D2,ld_t]) and as pairs of
// queries ([B,Hq,S2,D]); a key tile's K and V rows as pairs along D, its K as pairs of keys,
// and per query tile P^T, dS^T as pairs of queries and dS as pairs of keys.
struct Bf16BackwardTiles {
  static constexpr AttentionTiles kTiles = AttentionTiles::bf16;
  static constexpr int64_t kQueryAlign = 2;  // query ranges start on the pairs of Q and dO
  const AttentionShape& s;
  int64_t D2, S2, ld_t;
  Scratch<Word> q_t, dout_t, q_pairs, dout_pairs;

  Bf16BackwardTiles(const float* q, const float* dout, const AttentionShape& s_,
                    const BackwardScratch& layout)
      : s(s_), D2(ceil_div(s_.D, 2)), S2(ceil_div(s_.S, 2)), ld_t(layout.ld_t),
        q_t(layout.transposed_floats()), dout_t(layout.transposed_floats()),
        q_pairs(layout.pairs_floats()), dout_pairs(layout.pairs_floats()) {
    pairs_transposed_heads(q, s.B, s.S, s.Hq, s.D, 0, ld_t, q_t.p);
    pairs_transposed_heads(dout, s.B, s.S, s.Hq, s.D, 0, ld_t, dout_t.p);
    row_pairs_of_heads(q, s.B, s.S, s.Hq, s.D, 0, q_pairs.p);
    row_pairs_of_heads(dout, s.B, s.S, s.Hq, s.D, 0, dout_pairs.p);
  }

  struct KeyTile {
    const Bf16BackwardTiles& t;
    int64_t nc;
    Scratch<Word> k_words, v_words, k_pairs;  // [nc, D2] twice, [ceil(nc/2), D]
    Scratch<Word> pt_words, dst_words, ds_words;  // [nc, kQueryBlock/2] twice, [nc/2, kQueryBlock]
    KeyTile(const Bf16BackwardTiles& t_, const float* k_tile, const float* v_tile, int64_t nc_)
        : t(t_), nc(nc_), k_words(nc_ * t_.D2), v_words(nc_ * t_.D2),
          k_pairs(ceil_div(nc_, 2) * t_.s.D), pt_words(nc_ * kQueryBlock / 2),
          dst_words(nc_ * kQueryBlock / 2), ds_words(ceil_div(nc_, 2) * kQueryBlock) {
      const int64_t D = t.s.D, ldk = t.s.Hkv * D;
      for (int64_t c = 0; c < nc; ++c) {
        pairs_along_row(k_tile + c * ldk, D, k_words.p + c * t.D2);
        pairs_along_row(v_tile + c * ldk, D, v_words.p + c * t.D2);
      }
      for (int64_t c = 0; c < nc; c += 2)
        pairs_across_rows(k_tile + c * ldk, c + 1 < nc ? k_tile + (c + 1) * ldk : nullptr, D,
                          k_pairs.p + c / 2 * D);
    }
    void scores_t(int64_t b, int64_t h, int64_t i0, int64_t c0, int64_t c1, int64_t r_lo,
                  int64_t nr, float scale, float* pt, float* dpt) const {
      const int64_t off = (b * t.s.Hq + h) * t.D2 * t.ld_t + i0 + r_lo, at = c0 * kQueryBlock + r_lo;
      gemm_bf16_block(c1 - c0, nr - r_lo, t.D2, k_words.p + c0 * t.D2, t.D2, 1, t.q_t.p + off,
                      t.ld_t, pt + at, kQueryBlock, scale, false);
      gemm_bf16_block(c1 - c0, nr - r_lo, t.D2, v_words.p + c0 * t.D2, t.D2, 1, t.dout_t.p + off,
                      t.ld_t, dpt + at, kQueryBlock, 1.0f, false);
    }
    void accumulate_kv(int64_t b, int64_t h, int64_t i0, int64_t c0, int64_t c1, int64_t r_lo,
                       int64_t nr, const float* pt, const float* dst, float scale, float* dv_acc,
                       float* dk_acc) {
      constexpr int64_t half = kQueryBlock / 2;
      for (int64_t c = c0; c < c1; ++c) {  // r_lo is even
        pairs_along_row(pt + c * kQueryBlock + r_lo, nr - r_lo, pt_words.p + c * half + r_lo / 2);
        pairs_along_row(dst + c * kQueryBlock + r_lo, nr - r_lo, dst_words.p + c * half + r_lo / 2);
      }
      const int64_t D = t.s.D, n_pairs = ceil_div(nr - r_lo, 2), at = c0 * half + r_lo / 2;
      const int64_t pairs_off = ((b * t.s.Hq + h) * t.S2 + (i0 + r_lo) / 2) * D;  // i0 is even
      gemm_bf16_block(c1 - c0, D, n_pairs, pt_words.p + at, half, 1, t.dout_pairs.p + pairs_off, D,
                      dv_acc + c0 * D, D, 1.0f, true);
      gemm_bf16_block(c1 - c0, D, n_pairs, dst_words.p + at, half, 1, t.q_pairs.p + pairs_off, D,
                      dk_acc + c0 * D, D, scale, true);
    }
    void accumulate_q(int64_t r0, int64_t r1, int64_t n_keys, const float* dst, float scale,
                      float* dq_rows) {
      for (int64_t c = 0; c < n_keys; c += 2)  // dS = (dS^T)^T as pairs of keys
        pairs_across_rows(dst + c * kQueryBlock + r0,
                          c + 1 < nc ? dst + (c + 1) * kQueryBlock + r0 : nullptr, r1 - r0,
                          ds_words.p + c / 2 * kQueryBlock + r0);
      const int64_t ldq = t.s.Hq * t.s.D;
      gemm_bf16_block(r1 - r0, t.s.D, ceil_div(n_keys, 2), ds_words.p + r0, 1, kQueryBlock,
                      k_pairs.p, t.s.D, dq_rows + r0 * ldq, ldq, scale, true);
    }
  };
};

}  // namespace
}  // namespace ggtune::ops

#endif  // __AVX512BF16__
