// Blocked causal GQA attention as templates over a vector type (see simd_vec.h); included
// once per tier. All products are tiles of at most kQueryBlock x kKeyBlock x D through
// gemm_block, so the scores of a head never exist whole; the operand whose transpose a
// product needs (K in the forward, Q and dO in the backward) is transposed once per call.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/attention.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

constexpr int64_t kQueryBlock = 64;  // Br: query rows per tile
constexpr int64_t kKeyBlock = 64;    // Bc: keys per tile
// A tile crossing the causal diagonal is multiplied in chunks of this many rows, each over the
// keys (or queries) it needs: a 64 x 64 diagonal tile then costs 10/16 of a full one.
constexpr int64_t kDiagonalChunk = 16;

// A heap buffer local to one task or call (plain new[]: no library template compiled per tier).
template <class T = float>
struct Scratch {
  T* p;
  explicit Scratch(int64_t n) : p(new T[std::max<int64_t>(n, 1)]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// dst[b,h,d,l - l0] = src[b,l,h,d] for l in [l0, L): every head as a [D, L - l0] matrix with
// rows of `ld` floats, so tiles of its transpose are row-major operands of gemm_block. Done
// once per call, in blocks of kTransposeRows source rows (whose cache lines stay in L1 while
// each d writes one run of the block's length; one row at a time would write D scattered
// floats per row read).
constexpr int64_t kTransposeRows = 16;

inline void transpose_heads(const float* src /*[B,L,H,D]*/, int64_t B, int64_t L, int64_t H,
                            int64_t D, int64_t l0, int64_t ld, float* dst /*[B,H,D,ld]*/) {
  parallel_for_each(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    float* head = dst + bh * D * ld;
    for (int64_t lb = l0; lb < L; lb += kTransposeRows) {
      const int64_t le = std::min(lb + kTransposeRows, L);
      const float* rows = src + ((b * L + lb) * H + h) * D;  // row l at rows + (l - lb) * H * D
      for (int64_t d = 0; d < D; ++d)
        for (int64_t l = lb; l < le; ++l) head[d * ld + (l - l0)] = rows[(l - lb) * H * D + d];
    }
  });
}

// Row length of a transposed head of n columns: padded off the powers of two, whose strides
// map a tile's D rows onto the same few cache sets (a 4096-key cache ran 40x slower per key
// than a 512-key window).
inline int64_t transposed_ld(int64_t n) { return (n + 15) / 16 * 16 + 16; }

template <class V>
void scale_row(float* row, int64_t n, float alpha) {
  for_chunks<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    U::store(row + i, U::mul(U::load(row + i), U::set1(alpha)));
  });
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The attention backward's scratch, in one place for the kernel and for memory plans
// (attention_backward_scratch_bytes). Key blocks are split into chunks so that there are
// kTargetTasks work items (twice over 8 threads, for balance) even at batch 1 with few KV
// heads; each chunk beyond the first costs a dq-sized buffer, hence the cap. The split depends
// on the shape alone, not on the thread count: dq's partial sums are added in chunk order, so
// the same split gives the same bits on any number of threads. The operands the tiles read across heads are
// converted once per call: f32 tiles transpose Q and dO ([B,Hq,D,ld_t] floats each); bf16
// tiles keep them as bf16 pairs twice, along D (Q^T, dO^T: [B,Hq,D2,ld_t] words) and along the
// queries (Q, dO: [B,Hq,S2,D] words), one word = two bf16 = one float's bytes.
struct BackwardScratch {
  static constexpr int64_t kMaxChunks = 8, kTargetTasks = 16;
  int64_t n_chunks, dq_size, ld_t, B, Hq, S, D;
  bool bf16;

  BackwardScratch(const AttentionShape& s, AttentionTiles tiles)
      : n_chunks(std::clamp<int64_t>(
            std::min(ceil_div(s.Skv, kKeyBlock),
                     ceil_div(kTargetTasks, std::max<int64_t>(1, s.B * s.Hkv))),
            1, kMaxChunks)),
        dq_size(s.B * s.S * s.Hq * s.D), ld_t(transposed_ld(s.S)), B(s.B), Hq(s.Hq), S(s.S), D(s.D),
        bf16(tiles == AttentionTiles::bf16) {}

  int64_t delta_floats() const { return B * Hq * S; }
  int64_t dq_parts_floats() const { return (n_chunks - 1) * dq_size; }
  // q or dout transposed: [B,Hq,D,ld_t] floats, or [B,Hq,D2,ld_t] bf16 pairs
  int64_t transposed_floats() const { return B * Hq * (bf16 ? ceil_div(D, 2) : D) * ld_t; }
  int64_t pairs_floats() const { return bf16 ? B * Hq * ceil_div(S, 2) * D : 0; }  // q or dout
  int64_t total_floats() const {
    return delta_floats() + dq_parts_floats() + 2 * transposed_floats() + 2 * pairs_floats();
  }
};

// The smallest and largest first_key of every query tile (0 and 0 without bounds): the key
// tiles below a query tile's smallest bound are skipped (the speed of sliding windows and
// packed samples), and only tiles reaching above some query's bound need a per-entry mask.
struct QueryTileBounds {
  int32_t* minmax;  // [B, n_qblocks, 2]
  int64_t n_qblocks, n_batches;
  QueryTileBounds(const int32_t* first_key /*[B,S] or null*/, int64_t B, int64_t S)
      : minmax(new int32_t[std::max<int64_t>(2 * B * ceil_div(S, kQueryBlock), 1)]()),
        n_qblocks(ceil_div(S, kQueryBlock)),
        n_batches(B) {
    if (!first_key) return;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t qb = 0; qb < n_qblocks; ++qb) {
        const int32_t* lo = first_key + b * S + qb * kQueryBlock;
        const int64_t nr = std::min(kQueryBlock, S - qb * kQueryBlock);
        int32_t lo_min = lo[0], lo_max = lo[0];
        for (int64_t r = 1; r < nr; ++r) {
          lo_min = lo[r] < lo_min ? lo[r] : lo_min;
          lo_max = lo[r] > lo_max ? lo[r] : lo_max;
        }
        minmax[2 * (b * n_qblocks + qb)] = lo_min;
        minmax[2 * (b * n_qblocks + qb) + 1] = lo_max;
      }
  }
  ~QueryTileBounds() { delete[] minmax; }
  QueryTileBounds(const QueryTileBounds&) = delete;
  QueryTileBounds& operator=(const QueryTileBounds&) = delete;
  int64_t min(int64_t b, int64_t qb) const { return minmax[2 * (b * n_qblocks + qb)]; }
  int64_t max(int64_t b, int64_t qb) const { return minmax[2 * (b * n_qblocks + qb) + 1]; }
  int64_t lowest() const {  // the smallest bound of all (0 without queries)
    const int64_t n_tiles = n_batches * n_qblocks;
    int64_t lo = n_tiles > 0 ? minmax[0] : 0;
    for (int64_t t = 1; t < n_tiles; ++t) lo = minmax[2 * t] < lo ? minmax[2 * t] : lo;
    return lo;
  }
};

// ---- Tile products, one policy per operand precision ---------------------------------------
// The drivers below own the blocking, the masks and the softmax statistics (always float32); a
// policy owns the operands' layout and the seven products: forward S = scale Q K^T, O += P V;
// backward P^T = scale K Q^T, dP^T = V dO^T, dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K.
// F32Tiles multiplies float32 through gemm_block (every tier); Bf16Tiles (attention_bf16.h,
// avx512 only) rounds the operands to bf16 and accumulates in float32 with vdpbf16ps.

// Forward: K transposed once per call (only keys from k0 on, the lowest bound any query has).
template <class V>
struct F32ForwardTiles {
  static constexpr int64_t kKeyAlign = 1;  // key tiles may start at any key
  const AttentionShape& s;
  const float* v;
  int64_t k0, ld_kt;
  Scratch<> k_t;  // [B,Hkv,D,ld_kt]

  F32ForwardTiles(const float* k, const float* v_, const AttentionShape& s_, int64_t k0_)
      : s(s_), v(v_), k0(k0_), ld_kt(transposed_ld(s_.Skv - k0_)), k_t(s_.B * s_.Hkv * s_.D * ld_kt) {
    transpose_heads(k, s.B, s.Skv, s.Hkv, s.D, k0, ld_kt, k_t.p);
  }

  // One query tile of one head (rows [nr, D] of q with stride Hq*D).
  struct Task {
    const F32ForwardTiles& t;
    const float *q_tile, *kt_head, *v_head;
    int64_t nr;
    Task(const F32ForwardTiles& t_, const float* q_tile_, int64_t nr_, int64_t b, int64_t hk)
        : t(t_), q_tile(q_tile_), kt_head(t_.k_t.p + (b * t_.s.Hkv + hk) * t_.s.D * t_.ld_kt),
          v_head(t_.v + (b * t_.s.Skv * t_.s.Hkv + hk) * t_.s.D), nr(nr_) {}
    // scores[r, c] = scale q_r . k_{j0+c} for rows [r0, r1), c < nc (row stride kKeyBlock)
    void scores(int64_t r0, int64_t r1, int64_t j0, int64_t nc, float scale, float* scores) const {
      const int64_t ldq = t.s.Hq * t.s.D;
      gemm_block<V>(r1 - r0, nc, t.s.D, q_tile + r0 * ldq, ldq, 1, kt_head + (j0 - t.k0), t.ld_kt,
                    scores + r0 * kKeyBlock, kKeyBlock, scale, false);
    }
    // out[r] += sum_{c < nc} p[r, c] v_{j0+c} for rows [r0, r1)
    void add_pv(int64_t r0, int64_t r1, const float* p, int64_t j0, int64_t nc, float* out_tile) const {
      const int64_t ldk = t.s.Hkv * t.s.D, ldq = t.s.Hq * t.s.D;
      gemm_block<V>(r1 - r0, t.s.D, nc, p + r0 * kKeyBlock, kKeyBlock, 1, v_head + j0 * ldk, ldk,
                    out_tile + r0 * ldq, ldq, 1.0f, true);
    }
  };
};

// Backward: Q and dO transposed once per call.
template <class V>
struct F32BackwardTiles {
  static constexpr AttentionTiles kTiles = AttentionTiles::f32;  // its BackwardScratch layout
  static constexpr int64_t kQueryAlign = 1;  // query ranges may start anywhere
  const AttentionShape& s;
  const float *q, *dout;
  int64_t ld_t;
  Scratch<> q_t, dout_t;  // [B,Hq,D,ld_t]

  F32BackwardTiles(const float* q_, const float* dout_, const AttentionShape& s_,
                   const BackwardScratch& layout)
      : s(s_), q(q_), dout(dout_), ld_t(layout.ld_t), q_t(layout.transposed_floats()),
        dout_t(layout.transposed_floats()) {
    transpose_heads(q, s.B, s.S, s.Hq, s.D, 0, ld_t, q_t.p);
    transpose_heads(dout, s.B, s.S, s.Hq, s.D, 0, ld_t, dout_t.p);
  }

  // One key tile ([nc, D] rows of k and v with stride Hkv*D) against query tiles of its heads.
  struct KeyTile {
    const F32BackwardTiles& t;
    const float *k_tile, *v_tile;
    int64_t nc;
    KeyTile(const F32BackwardTiles& t_, const float* k_tile_, const float* v_tile_, int64_t nc_)
        : t(t_), k_tile(k_tile_), v_tile(v_tile_), nc(nc_) {}
    // pt = scale K Q^T, dpt = V dO^T: keys [c0, c1) of the tile (rows) and queries i0 + [r_lo, nr)
    // of head h (columns; row stride kQueryBlock)
    void scores_t(int64_t b, int64_t h, int64_t i0, int64_t c0, int64_t c1, int64_t r_lo,
                  int64_t nr, float scale, float* pt, float* dpt) const {
      const int64_t ldk = t.s.Hkv * t.s.D, at = c0 * kQueryBlock + r_lo;
      const int64_t off = (b * t.s.Hq + h) * t.s.D * t.ld_t + i0 + r_lo;
      gemm_block<V>(c1 - c0, nr - r_lo, t.s.D, k_tile + c0 * ldk, ldk, 1, t.q_t.p + off, t.ld_t,
                    pt + at, kQueryBlock, scale, false);
      gemm_block<V>(c1 - c0, nr - r_lo, t.s.D, v_tile + c0 * ldk, ldk, 1, t.dout_t.p + off, t.ld_t,
                    dpt + at, kQueryBlock, 1.0f, false);
    }
    // rows [c0, c1) of dv += P^T dO and dk += scale dS^T Q ([nc, D]), over queries [r_lo, nr)
    void accumulate_kv(int64_t b, int64_t h, int64_t i0, int64_t c0, int64_t c1, int64_t r_lo,
                       int64_t nr, const float* pt, const float* dst, float scale, float* dv_acc,
                       float* dk_acc) {
      const int64_t D = t.s.D, ldq = t.s.Hq * D, at = c0 * kQueryBlock + r_lo;
      const int64_t q_off = ((b * t.s.S + i0 + r_lo) * t.s.Hq + h) * D;
      gemm_block<V>(c1 - c0, D, nr - r_lo, pt + at, kQueryBlock, 1, t.dout + q_off, ldq,
                    dv_acc + c0 * D, D, 1.0f, true);
      gemm_block<V>(c1 - c0, D, nr - r_lo, dst + at, kQueryBlock, 1, t.q + q_off, ldq,
                    dk_acc + c0 * D, D, scale, true);
    }
    // rows [r0, r1) of dq_rows (stride Hq*D) += scale dS K over the tile's keys [0, n_keys)
    void accumulate_q(int64_t r0, int64_t r1, int64_t n_keys, const float* dst, float scale,
                      float* dq_rows) {
      const int64_t ldk = t.s.Hkv * t.s.D, ldq = t.s.Hq * t.s.D;
      // dS = (dS^T)^T, read through swapped strides
      gemm_block<V>(r1 - r0, t.s.D, n_keys, dst + r0, 1, kQueryBlock, k_tile, ldk,
                    dq_rows + r0 * ldq, ldq, scale, true);
    }
  };
};

// dst[r * ld + d] = the bf16 bits of rows[r * ld + d] for r < n, d < D: a finished tile's compact
// copy, while it is in cache. Not inlined into the task: inlined, it slowed the task's own
// loops by a quarter (measured, SmolLM2's shapes), far more than it costs.
template <class V>
__attribute__((noinline)) void rows_to_bf16(const float* rows, int64_t n, int64_t D, int64_t ld,
                                            uint16_t* dst) {
  for (int64_t r = 0; r < n; ++r)
    for_chunks<V>(D, [&](auto u, int64_t d) {
      using U = decltype(u);
      U::store_bf16(dst + r * ld + d, U::load(rows + r * ld + d));
    });
}

// One task = one query block of one head: the tile's rows of `out` accumulate P.V under an
// online softmax (running max m and sum l per row), then are normalised by l.
template <class V, class Tiles>
void attention_forward_v(const float* q, const float* k, const float* v, float scale, float* out,
                         uint16_t* out_bf16, float* lse, const int32_t* first_key,
                         const AttentionShape& s) {
  const int64_t D = s.D, group = s.Hq / s.Hkv, off = s.Skv - s.S;
  const int64_t ldq = s.Hq * D;
  const int64_t n_qblocks = ceil_div(s.S, kQueryBlock);
  // Only keys some query sees are converted: a sliding window's decode step reads the last
  // `window` keys of a long cache. Key tiles start on the policy's alignment (bf16 pairs of
  // keys); keys below a row's bound are masked like any other.
  const QueryTileBounds bounds(first_key, s.B, s.S);
  const int64_t align = Tiles::kKeyAlign;
  const Tiles tiles(k, v, s, bounds.lowest() / align * align);
  parallel_for_each(s.B * s.Hq * n_qblocks, [&](int64_t task) {
    // Late query blocks see the most keys: hand them out first for a balanced tail.
    const int64_t qb = n_qblocks - 1 - task % n_qblocks;
    const int64_t b = task / n_qblocks / s.Hq, h = task / n_qblocks % s.Hq, hk = h / group;
    const int64_t i0 = qb * kQueryBlock, nr = std::min(kQueryBlock, s.S - i0);
    const float* q_tile = q + ((b * s.S + i0) * s.Hq + h) * D;             // [nr, D], ld ldq
    float* out_tile = out + ((b * s.S + i0) * s.Hq + h) * D;               // [nr, D], ld ldq
    const int32_t* lo_tile = first_key ? first_key + b * s.S + i0 : nullptr;  // [nr] or null
    typename Tiles::Task products(tiles, q_tile, nr, b, hk);
    Scratch scores(kQueryBlock * kKeyBlock), m(kQueryBlock), l(kQueryBlock);
    for (int64_t r = 0; r < nr; ++r) {
      std::memset(out_tile + r * ldq, 0, sizeof(float) * D);
      m.p[r] = -std::numeric_limits<float>::infinity();
      l.p[r] = 0.0f;
    }
    const int64_t n_keys = i0 + nr + off;  // keys seen by the tile's last row
    for (int64_t j0 = bounds.min(b, qb) / align * align; j0 < n_keys; j0 += kKeyBlock) {
      const int64_t nc = std::min(kKeyBlock, n_keys - j0);
      // On the causal diagonal, chunks of rows need only the keys their last row sees.
      const int64_t chunk = j0 + nc > i0 + off + 1 ? kDiagonalChunk : nr;
      const auto keys_seen = [&](int64_t r1) { return std::clamp<int64_t>(i0 + r1 + off - j0, 0, nc); };
      for (int64_t r0 = 0; r0 < nr; r0 += chunk) {
        const int64_t r1 = std::min(nr, r0 + chunk);
        products.scores(r0, r1, j0, keys_seen(r1), scale, scores.p);
      }
      for (int64_t r = 0; r < nr; ++r) {
        float* srow = scores.p + r * kKeyBlock;
        // The row's keys in this tile are [c_lo, c_hi); the others are masked (p = 0).
        const int64_t c_lo = lo_tile ? std::clamp<int64_t>(lo_tile[r] - j0, 0, nc) : 0;
        const int64_t c_hi = std::clamp<int64_t>(i0 + r + off + 1 - j0, 0, nc);
        std::memset(srow, 0, sizeof(float) * c_lo);
        std::memset(srow + c_hi, 0, sizeof(float) * (nc - c_hi));
        if (c_hi <= c_lo) continue;
        float* valid = srow + c_lo;
        const float m_new = std::max(m.p[r], reduce_max<V>(valid, c_hi - c_lo));
        const float p_sum = reduce_sum<V>(c_hi - c_lo, [&](auto u, int64_t c) {
          using U = decltype(u);
          const auto p = U::exp(U::sub(U::load(valid + c), U::set1(m_new)));
          U::store(valid + c, p);
          return p;
        });
        const float alpha = std::exp(m.p[r] - m_new);  // 0 on the first block (m = -inf)
        if (alpha != 1.0f) scale_row<V>(out_tile + r * ldq, D, alpha);
        l.p[r] = l.p[r] * alpha + p_sum;
        m.p[r] = m_new;
      }
      for (int64_t r0 = 0; r0 < nr; r0 += chunk) {
        const int64_t r1 = std::min(nr, r0 + chunk);
        products.add_pv(r0, r1, scores.p, j0, keys_seen(r1), out_tile);
      }
    }
    float* lse_tile = lse + (b * s.Hq + h) * s.S + i0;
    for (int64_t r = 0; r < nr; ++r) {
      scale_row<V>(out_tile + r * ldq, D, 1.0f / l.p[r]);
      lse_tile[r] = m.p[r] + std::log(l.p[r]);
    }
    if (out_bf16) rows_to_bf16<V>(out_tile, nr, D, ldq, out_bf16 + (out_tile - out));
  });
}

// delta[b,h,i] = dout_i . out_i  (= sum_j P_ij dP_ij, the softmax backward's row term); out
// float32 or bfloat16 bits.
template <class V, class Out>
void attention_delta(const float* dout, const Out* out, float* delta, const AttentionShape& s) {
  parallel_for(s.B * s.S * s.Hq, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {  // row = (b * S + i) * Hq + h
      const float* g = dout + row * s.D;
      const Out* o = out + row * s.D;
      const int64_t h = row % s.Hq, i = row / s.Hq % s.S, b = row / s.Hq / s.S;
      delta[(b * s.Hq + h) * s.S + i] = reduce_sum<V>(s.D, [&](auto u, int64_t d) {
        using U = decltype(u);
        return U::mul(U::load(g + d), load_as<U>(o + d));
      });
    }
  });
}

// Zeroes P^T and dS^T where key j0 + c lies below query r's first key. The lower bounds of a
// tile's queries need not be monotonic (random bounds, packed samples), so this goes entry
// by entry; the caller runs it only on tiles some query of which starts after key j0.
inline void mask_below_first_key(const int32_t* lo /*[nr]*/, int64_t nr, int64_t j0, int64_t nc,
                                 float* pt /*[nc, kQueryBlock]*/, float* dst /*[nc, kQueryBlock]*/) {
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t r = 0; r < nr; ++r)
      if (lo[r] > j0 + c) pt[c * kQueryBlock + r] = dst[c * kQueryBlock + r] = 0.0f;
}

// Backward, FlashAttention-2 order: a task owns one KV head's key blocks (every
// n_chunks-th one, which balances the causal work) and so owns their dk/dv rows, summed
// over the query heads of the group; it adds its share of dq into its own dq buffer.
// With more than one chunk per KV head the buffers are summed afterwards in chunk order,
// so results never depend on scheduling. Per (key tile, query tile), transposed so the
// key index is the row:
//   P^T = exp(scale K Q^T - lse),  dP^T = V dO^T,  dS^T = P^T * (dP^T - delta)
//   dV += P^T dO,   dK += scale dS^T Q,   dQ += scale dS K
template <class V, class Tiles>
void attention_backward_v(const float* dout, const float* q, const float* k, const float* v,
                          const float* out, const uint16_t* out_bf16, const float* lse, float scale,
                          float* dq, float* dk, float* dv, const int32_t* first_key,
                          const AttentionShape& s) {
  const int64_t D = s.D, group = s.Hq / s.Hkv, off = s.Skv - s.S;
  const int64_t n_qblocks = ceil_div(s.S, kQueryBlock), n_kblocks = ceil_div(s.Skv, kKeyBlock);
  const BackwardScratch layout(s, Tiles::kTiles);
  const int64_t n_chunks = layout.n_chunks, dq_size = layout.dq_size;

  Scratch delta(layout.delta_floats()), dq_parts(layout.dq_parts_floats());
  if (out_bf16) attention_delta<V>(dout, out_bf16, delta.p, s);
  else attention_delta<V>(dout, out, delta.p, s);
  const Tiles tiles(q, dout, s, layout);
  std::memset(dq, 0, sizeof(float) * dq_size);
  std::memset(dq_parts.p, 0, sizeof(float) * (n_chunks - 1) * dq_size);
  const QueryTileBounds bounds(first_key, s.B, s.S);

  parallel_for_each(s.B * s.Hkv * n_chunks, [&](int64_t task) {
    const int64_t chunk = task % n_chunks, b = task / n_chunks / s.Hkv,
                  hk = task / n_chunks % s.Hkv;
    float* dq_acc = chunk == 0 ? dq : dq_parts.p + (chunk - 1) * dq_size;
    Scratch pt(kKeyBlock * kQueryBlock), dst(kKeyBlock * kQueryBlock), dk_acc(kKeyBlock * D),
        dv_acc(kKeyBlock * D);
    for (int64_t kb = chunk; kb < n_kblocks; kb += n_chunks) {
      const int64_t j0 = kb * kKeyBlock, nc = std::min(kKeyBlock, s.Skv - j0);
      const int64_t kv_row = (b * s.Skv + j0) * s.Hkv + hk;
      typename Tiles::KeyTile products(tiles, k + kv_row * D, v + kv_row * D, nc);
      std::memset(dk_acc.p, 0, sizeof(float) * nc * D);
      std::memset(dv_acc.p, 0, sizeof(float) * nc * D);
      const int64_t first_query = std::max<int64_t>(0, j0 - off);  // first row seeing key j0
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t qb = first_query / kQueryBlock; qb < n_qblocks; ++qb) {
          if (bounds.min(b, qb) >= j0 + nc) continue;  // no query of the tile sees these keys
          const int64_t i0 = qb * kQueryBlock, nr = std::min(kQueryBlock, s.S - i0);
          const int64_t q_row = (b * s.S + i0) * s.Hq + h;
          const float* lse_tile = lse + (b * s.Hq + h) * s.S + i0;
          const float* delta_tile = delta.p + (b * s.Hq + h) * s.S + i0;
          const int32_t* lo_tile = first_key ? first_key + b * s.S + i0 : nullptr;
          // On the causal diagonal, chunks of keys need only the queries their first key is
          // seen by, and chunks of queries only the keys their last query sees.
          const bool diagonal = j0 + nc > i0 + off + 1;
          const int64_t chunk_c = diagonal ? kDiagonalChunk : nc, chunk_r = diagonal ? kDiagonalChunk : nr;
          const auto queries_from = [&](int64_t c0) {
            return std::clamp<int64_t>(j0 + c0 - off - i0, 0, nr) / Tiles::kQueryAlign * Tiles::kQueryAlign;
          };
          for (int64_t c0 = 0; c0 < nc; c0 += chunk_c)
            products.scores_t(b, h, i0, c0, std::min(nc, c0 + chunk_c), queries_from(c0), nr, scale,
                              pt.p, dst.p);
          for (int64_t c = 0; c < nc; ++c) {
            float* prow = pt.p + c * kQueryBlock;
            float* dsrow = dst.p + c * kQueryBlock;
            const int64_t r_first = std::clamp<int64_t>(j0 + c - off - i0, 0, nr);  // causal
            std::memset(prow, 0, sizeof(float) * r_first);
            std::memset(dsrow, 0, sizeof(float) * r_first);
            for_chunks<V>(nr - r_first, [&](auto u, int64_t i) {
              using U = decltype(u);
              const int64_t r = r_first + i;
              const auto p = U::exp(U::sub(U::load(prow + r), U::load(lse_tile + r)));
              U::store(prow + r, p);
              U::store(dsrow + r, U::mul(p, U::sub(U::load(dsrow + r), U::load(delta_tile + r))));
            });
          }
          if (bounds.max(b, qb) > j0) mask_below_first_key(lo_tile, nr, j0, nc, pt.p, dst.p);
          for (int64_t c0 = 0; c0 < nc; c0 += chunk_c)
            products.accumulate_kv(b, h, i0, c0, std::min(nc, c0 + chunk_c), queries_from(c0), nr,
                                   pt.p, dst.p, scale, dv_acc.p, dk_acc.p);
          for (int64_t r0 = 0; r0 < nr; r0 += chunk_r) {
            const int64_t r1 = std::min(nr, r0 + chunk_r);
            products.accumulate_q(r0, r1, std::clamp<int64_t>(i0 + r1 + off - j0, 0, nc), dst.p,
                                  scale, dq_acc + q_row * D);
          }
        }
      }
      for (int64_t c = 0; c < nc; ++c) {
        std::memcpy(dk + (kv_row + c * s.Hkv) * D, dk_acc.p + c * D, sizeof(float) * D);
        std::memcpy(dv + (kv_row + c * s.Hkv) * D, dv_acc.p + c * D, sizeof(float) * D);
      }
    }
  });

  for (int64_t chunk = 1; chunk < n_chunks; ++chunk) {
    const float* part = dq_parts.p + (chunk - 1) * dq_size;
    parallel_for(dq_size, 1 << 15, [&](int64_t e0, int64_t e1) {
      for_chunks<V>(e1 - e0, [&](auto u, int64_t i) {
        using U = decltype(u);
        U::store(dq + e0 + i, U::add(U::load(dq + e0 + i), U::load(part + e0 + i)));
      });
    });
  }
}

// The forward and backward at both precisions; bf16 requests run the float32 tiles on tiers
// without vdpbf16ps (where float32 is both the faster and the more accurate).
template <class V, class Forward, class Backward>
void attention_forward_at(const float* q, const float* k, const float* v, float scale,
                          float* out, uint16_t* out_bf16, float* lse, const int32_t* first_key,
                          AttentionTiles tiles, const AttentionShape& s) {
  if (tiles == AttentionTiles::bf16)
    attention_forward_v<V, Forward>(q, k, v, scale, out, out_bf16, lse, first_key, s);
  else
    attention_forward_v<V, F32ForwardTiles<V>>(q, k, v, scale, out, out_bf16, lse, first_key, s);
}

template <class V, class Forward, class Backward>
void attention_backward_at(const float* dout, const float* q, const float* k, const float* v,
                           const float* out, const uint16_t* out_bf16, const float* lse,
                           float scale, float* dq, float* dk, float* dv, const int32_t* first_key,
                           AttentionTiles tiles, const AttentionShape& s) {
  if (tiles == AttentionTiles::bf16)
    attention_backward_v<V, Backward>(dout, q, k, v, out, out_bf16, lse, scale, dq, dk, dv,
                                      first_key, s);
  else
    attention_backward_v<V, F32BackwardTiles<V>>(dout, q, k, v, out, out_bf16, lse, scale, dq, dk,
                                                 dv, first_key, s);
}

// Forward/Backward: the tiles bf16 requests get (F32* on tiers without vdpbf16ps).
template <class V, class Forward = F32ForwardTiles<V>, class Backward = F32BackwardTiles<V>>
constexpr AttentionKernels make_attention_kernels() {
  return {&attention_forward_at<V, Forward, Backward>, &attention_backward_at<V, Forward, Backward>};
}

}  // namespace
}  // namespace ggtune::ops
