// The int8 GEMM driver, the scalar reference kernels and the tier switches (see qgemm.h).
//
// Loop nest of one thread over its output block [m0, m1) x [n0, n1):
//   for jc (nc columns):
//     for pc (kc deep):
//       pack B panel (kc x nc)              unpacked or requantized once per thread, in L2
//       for ir (MR rows):                   MR rows of A, hot in L1 ...
//         for jr (kQNr columns):            ... meet every B strip of the panel
//           micro-kernel
// A needs no packing: its quantized rows are read in place by broadcasts. (Strips outside,
// rows inside was 3-14% slower at 1024 rows: A's panel, read once per strip, spilled from L2,
// and the head's backward, K = the vocabulary, read its A from memory.)
#include "gemm/qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "dispatch.h"
#include "gemm/scratch.h"
#include "parallel.h"

namespace ggtune::gemm {
namespace {

// kc: a whole K up to kMaxKc (C is then written once); deeper K is cut into equal panels.
// A panel of 256 columns 1024 deep is 320 KB, within L2.
constexpr int64_t kNc = 256;
constexpr int kScalarMr = 4;

// Q8 rounding of n <= kQBlock values x[i * stride], zero past n: codes q in [-127, 127] with
// d = amax / 127, code = round-half-even(x * 127 / amax). Returns d; NaN (codes 0) when a value
// is inf or NaN. The scalar reference of the activations' rounding.
float round_q8_block(const float* x, int64_t stride, int64_t n, int32_t* q) {
  float amax = 0.0f, poison = 0.0f;  // poison: NaN when the block holds an inf or NaN
  for (int64_t i = 0; i < n; ++i) {
    amax = std::fmax(amax, std::fabs(x[i * stride]));
    poison += x[i * stride] - x[i * stride];
  }
  const float inv = amax != 0.0f && poison == 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t i = 0; i < kQBlock; ++i)
    q[i] = i < n && inv != 0.0f ? int32_t(std::nearbyint(x[i * stride] * inv)) : 0;
  return amax / 127.0f + poison;
}

// c[m, n] += the update, rank by rank (the scalar reference of the micro-kernels' update).
void add_update(const LowRankUpdate& up, int64_t m, int64_t n, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < up.r; ++k) {
      const float uk = up.scale * up.u[i * up.ldu + k];
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] += uk * up.v[k * up.ldv + j];
    }
}

// The offset codes of column j's blocks 2p and 2p + 1 in a strip (its even block's c slot).
inline const int16_t* offset_pair(const uint8_t* strip, int64_t p, int j) {
  return reinterpret_cast<const int16_t*>(strip + 2 * p * kQBlockBytes + kQOffsetSlot) + 2 * j;
}

inline const float* offset_scales(const uint8_t* strip, int64_t blocks) {
  return reinterpret_cast<const float*>(strip + blocks * kQBlockBytes);
}

template <bool Affine>
void q_kernel_scalar(int64_t blocks, const int8_t* a, int64_t lda, const float* ad,
                     const int32_t* ints, const float* offset_scale, int64_t lds, const uint8_t* b,
                     float* c, int64_t ldc, int m, int n, bool accumulate,
                     const LowRankUpdate* update) {
  float acc[kScalarMr][kQNr] = {};
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const uint8_t* codes = b + blk * kQBlockBytes;
    const auto* db = reinterpret_cast<const float*>(codes + kQCodeBytes);
    for (int i = 0; i < m; ++i) {
      const int8_t* ar = a + i * lda + blk * kQBlock;
      const float da = ad[i * lds + blk];
      for (int j = 0; j < kQNr; ++j) {
        int32_t dot = Affine ? 0 : ints[i * lds + blk];
        for (int k = 0; k < kQBlock; ++k)
          dot += int32_t(codes[((k / 4) * kQNr + j) * 4 + k % 4]) * int32_t(ar[k]);
        acc[i][j] += float(dot) * (db[j] * da);
      }
    }
  }
  if (Affine)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < kQNr; ++j) {
        int32_t off = 0;
        for (int64_t p = 0; p < (blocks + 1) / 2; ++p) {
          const int32_t sums = ints[i * lds + p];
          const int16_t* cp = offset_pair(b, p, j);
          off += int32_t(cp[0]) * int16_t(sums & 0xffff) + int32_t(cp[1]) * int16_t(sums >> 16);
        }
        acc[i][j] += float(off) * (offset_scales(b, blocks)[j] * offset_scale[i]);
      }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
  if (update) add_update(*update, m, n, c, ldc);
}

// Everything about a call that does not depend on the thread.
struct QPlan {
  int64_t M, N, K;
  QuantizedA a;
  const QuantBOperand* b;
  float* c;
  int64_t ldc;
  bool accumulate;
  const QKernelSet* ks;
  QMicroKernel kernel;
  bool affine;
  const int32_t* ints;         // per A row: symmetric, -k * sum(qa) per block; affine, offset codes
  const float* offset_scale;   // affine: per A row, the offset codes' scale
  int64_t kc, nc, n_unit;
  const LowRankUpdate* update;  // nullptr: none
};

QPlan make_plan(int64_t M, int64_t N, int64_t K, const QuantizedA& a, const QuantBOperand& b,
                float* c, int64_t ldc, bool accumulate, const int32_t* ints,
                const float* offset_scale, const LowRankUpdate* update) {
  const QKernelSet* ks = &active_q_kernels();
  const bool affine = b.offset_code() == 0;
  const QMicroKernel kernel = affine ? ks->affine : b.column_scaled() ? ks->column_scaled : ks->symmetric;
  QPlan p{M, N, K, a, &b, c, ldc, accumulate, ks, kernel, affine, ints, offset_scale, 0, 0, 0, update};
  const int64_t panels = (K + kMaxKc - 1) / kMaxKc;
  // An affine panel starts on an even block: A's offset codes go two blocks per int32.
  const int64_t k_align = affine ? std::lcm<int64_t>(b.k_align(), 2 * kQBlock) : b.k_align();
  p.kc = std::min(K, round_up((K + panels - 1) / panels, k_align));
  p.n_unit = std::lcm<int64_t>(kQNr, b.n_align());
  p.nc = round_up(kNc, p.n_unit);
  return p;
}

// The output cut into tn x tm blocks, one per thread: tn along N (each thread packs only its
// columns of B), tm along M (threads of one column band all pack it). Chosen to minimise one
// thread's time, packing a weight element costing about kPackPerMac multiply-adds (measured:
// unpacking ~0.2 ns per element, a multiply-add ~0.007 ns). On 2 cores this is the N split
// whenever N has 2 strips; on many cores small N (576 -> 192: 6 strips) also splits M, where
// an M split alone would pack all of B on every core.
struct Grid {
  int64_t tn, tm;
};
constexpr double kPackPerMac = 28.0;

Grid thread_grid(int64_t M, int64_t N, const QPlan& p, int threads) {
  const int64_t n_units = (N + p.n_unit - 1) / p.n_unit, m_units = (M + p.ks->mr - 1) / p.ks->mr;
  Grid best{1, 1};
  double best_cost = 0;
  for (int64_t tn = 1; tn <= std::min<int64_t>(threads, n_units); ++tn) {
    const int64_t tm = std::min<int64_t>(threads / tn, m_units);
    const double cols = double((n_units + tn - 1) / tn * p.n_unit);
    const double rows = double((m_units + tm - 1) / tm * p.ks->mr);
    const double cost = cols * (kPackPerMac + rows);
    if (tn == 1 || cost < best_cost) best = {tn, tm}, best_cost = cost;
  }
  return best;
}

void run_block(const QPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  thread_local ScratchBuffer panel_buf, scratch_buf;
  const int64_t mr = p.ks->mr;
  for (int64_t jc = n0; jc < n1; jc += p.nc) {
    const int64_t ncur = std::min(p.nc, n1 - jc);
    const int64_t strips = (ncur + kQNr - 1) / kQNr;
    for (int64_t pc = 0; pc < p.K; pc += p.kc) {
      const int64_t kcur = std::min(p.kc, p.K - pc), kb = q_blocks(kcur);
      const int64_t strip_bytes = q_strip_bytes(kb);
      auto* panel = static_cast<uint8_t*>(panel_buf.get(strips * strip_bytes));
      if (ncur % kQNr) std::memset(panel + (strips - 1) * strip_bytes, 0, strip_bytes);
      float* scratch = static_cast<float*>(scratch_buf.get(4 * p.b->scratch_floats(kcur, ncur)));
      p.b->pack(pc, kcur, jc, ncur, panel, scratch);
      const bool accumulate = pc > 0 || p.accumulate;
      const bool last_panel = pc + kcur >= p.K;  // the update goes in once, with the last panel
      const int64_t b0 = pc / kQBlock, i0 = p.affine ? b0 / 2 : b0;  // ints: per pair, per block
      for (int64_t ir = m0; ir < m1; ir += mr) {
        const int m = int(std::min(mr, m1 - ir));
        const int32_t* ints = p.ints + ir * p.a.lds + i0;
        const float* offset_scale = p.offset_scale ? p.offset_scale + ir : nullptr;
        for (int64_t jr = 0; jr < ncur; jr += kQNr) {
          const uint8_t* strip = panel + (jr / kQNr) * strip_bytes;
          float* tile = p.c + ir * p.ldc + jc + jr;
          const int n = int(std::min<int64_t>(kQNr, ncur - jr));
          const LowRankUpdate update = p.update && last_panel ? p.update->at(ir, jc + jr) : LowRankUpdate{};
          p.kernel(kb, p.a.q + ir * p.a.ldq + pc, p.a.ldq, p.a.d + ir * p.a.lds + b0, ints,
                      offset_scale, p.a.lds, strip, tile, p.ldc, m, n, accumulate,
                      update.u ? &update : nullptr);
        }
      }
    }
  }
}

}  // namespace

void quantize_row_q8_scalar(const float* x, int64_t K, int8_t* q, float* d, float* s,
                            int32_t* sum_out) {
  int32_t codes[kQBlock];
  for (int64_t b = 0; b < q_blocks(K); ++b) {
    const int64_t k0 = b * kQBlock;
    d[b] = round_q8_block(x + k0, 1, std::min<int64_t>(kQBlock, K - k0), codes);
    int32_t sum = 0;
    for (int i = 0; i < kQBlock; ++i) {
      q[k0 + i] = int8_t(codes[i]);
      sum += codes[i];
    }
    s[b] = d[b] * float(sum);
    sum_out[b] = sum;
  }
}

void quantize_rows_q8(const float* x, int64_t M, int64_t K, int64_t ldx, int8_t* q, int64_t ldq,
                      float* d, float* s, int32_t* sum, int64_t lds) {
  parallel_for(M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = x + m * ldx;
      int8_t* qr = q + m * ldq;
#if defined(__x86_64__)
      if (active_isa() == Isa::avx512 &&
          quantize_row_q8_avx512(xr, K, qr, d + m * lds, s + m * lds, sum + m * lds))
        continue;
#endif
      quantize_row_q8_scalar(xr, K, qr, d + m * lds, s + m * lds, sum + m * lds);
    }
  });
}

void put_q_column(uint8_t* block, int lane, const uint8_t* codes, float d) {
  for (int g = 0; g < kQBlock / 4; ++g) std::memcpy(block + (g * kQNr + lane) * 4, codes + 4 * g, 4);
  reinterpret_cast<float*>(block + kQCodeBytes)[lane] = d;
}

void put_q_offsets_scalar(uint8_t* panel, int64_t blocks, int64_t j, int64_t count,
                          const float* c, int64_t ldd) {
  for (int64_t i = 0; i < count; ++i) {
    const float* ci = c + i * ldd;
    float amax = 0.0f, poison = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) amax = std::fmax(amax, std::fabs(ci[b])), poison += ci[b] - ci[b];
    const float inv = amax != 0.0f && poison == 0.0f ? float(kOffsetCodeMax) / amax : 0.0f;
    const int lane = int((j + i) % kQNr);
    for (int64_t b = 0; b < round_up(blocks, 2); ++b) {
      auto* pair =
          reinterpret_cast<int16_t*>(q_block_at(panel, blocks, j + i, b & ~int64_t(1)) + kQOffsetSlot);
      pair[2 * lane + (b & 1)] = b < blocks ? int16_t(std::nearbyint(ci[b] * inv)) : 0;
    }
    reinterpret_cast<float*>(q_strip_tail(panel, blocks, j + i))[lane] =
        amax / float(kOffsetCodeMax) + poison;
  }
}

void put_q_columns(uint8_t* panel, int64_t blocks, int64_t j, int64_t count, const uint8_t* codes,
                   int64_t ld, const float* d, const float* c, int64_t ldd) {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 &&
      put_q_columns_avx512(panel, blocks, j, count, codes, ld, d, c, ldd))
    return;
#endif
  for (int64_t i = 0; i < count; ++i)
    for (int64_t b = 0; b < blocks; ++b)
      put_q_column(q_block_at(panel, blocks, j + i, b), int((j + i) % kQNr),
                   codes + i * ld + b * kQBlock, d[i * ldd + b]);
  if (c) put_q_offsets_scalar(panel, blocks, j, count, c, ldd);
}

void offset_sums_row_scalar(const float* s, int64_t blocks, int32_t* pairs, float* scale) {
  float amax = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) amax = std::fmax(amax, std::fabs(s[b]));  // NaN: skipped
  const float inv = amax != 0.0f ? float(kOffsetSumMax) / amax : 0.0f;
  auto code = [&](int64_t b) -> uint32_t {
    return b < blocks && s[b] == s[b] ? uint16_t(int16_t(std::nearbyint(s[b] * inv))) : 0;
  };
  for (int64_t p = 0; p < (blocks + 1) / 2; ++p) pairs[p] = int32_t(code(2 * p) | code(2 * p + 1) << 16);
  *scale = amax / float(kOffsetSumMax);
}

void offset_sums(const QuantizedA& a, int64_t M, int64_t K, int32_t* pairs, float* scale) {
  const int64_t blocks = q_blocks(K);
  parallel_for(M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
#if defined(__x86_64__)
      if (active_isa() == Isa::avx512 &&
          offset_sums_row_avx512(a.s + m * a.lds, blocks, pairs + m * a.lds, scale + m))
        continue;
#endif
      offset_sums_row_scalar(a.s + m * a.lds, blocks, pairs + m * a.lds, scale + m);
    }
  });
}

void column_amax_scalar(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax,
                        float* poison) {
  std::fill(amax, amax + nc, 0.0f);
  std::fill(poison, poison + nc, 0.0f);
  for (int64_t r = 0; r < kc; ++r)
    for (int64_t j = 0; j < nc; ++j) {
      const float x = tile[r * ld + j];
      amax[j] = std::fmax(amax[j], std::fabs(x));
      poison[j] += x - x;
    }
}

void quantize_tile_scalar(const float* tile, int64_t ld, int64_t kc, int64_t nc,
                          const float* amax, const float* poison, uint8_t* panel) {
  const int64_t blocks = q_blocks(kc);
  uint8_t codes[kQBlock];
  for (int64_t j = 0; j < nc; ++j) {
    const float inv = amax[j] != 0.0f && poison[j] == 0.0f ? 127.0f / amax[j] : 0.0f;
    const float d = amax[j] / 127.0f + poison[j];
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kQBlock;
      for (int64_t r = 0; r < kQBlock; ++r) {
        const int32_t q =
            r0 + r < kc && inv != 0.0f ? int32_t(std::nearbyint(tile[(r0 + r) * ld + j] * inv)) : 0;
        codes[r] = uint8_t(128 + q);
      }
      put_q_column(q_block_at(panel, blocks, j, b), int(j % kQNr), codes, d);
    }
  }
}

void column_amax(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax, float* poison) {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 && column_amax_avx512(tile, ld, kc, nc, amax, poison)) return;
#endif
  column_amax_scalar(tile, ld, kc, nc, amax, poison);
}

void quantize_tile(const float* tile, int64_t ld, int64_t kc, int64_t nc, const float* amax,
                   const float* poison, uint8_t* panel) {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512 && quantize_tile_avx512(tile, ld, kc, nc, amax, poison, panel))
    return;
#endif
  quantize_tile_scalar(tile, ld, kc, nc, amax, poison, panel);
}

const QKernelSet& q_kernels_scalar() {
  // Column-scaled panels are symmetric ones whose d repeats: the symmetric kernel covers them.
  static const QKernelSet set{kScalarMr, q_kernel_scalar<true>, q_kernel_scalar<false>,
                              q_kernel_scalar<false>};
  return set;
}

const QKernelSet& active_q_kernels() {
#if defined(__x86_64__)
  if (active_isa() == Isa::avx512) return q_kernels_avx512();
#endif
  return q_kernels_scalar();
}

void run_q8(int64_t M, int64_t N, int64_t K, const QuantizedA& a, const QuantBOperand& b,
            float* c, int64_t ldc, bool accumulate, const LowRankUpdate* update) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
    if (update) add_update(*update, M, N, c, ldc);
    return;
  }
  // Per row of A: symmetric B, the per-block integer start -k * sum(qa); affine B, the
  // offset codes and their scale.
  thread_local ScratchBuffer ints_buf, scale_buf;
  auto* ints = static_cast<int32_t*>(ints_buf.get(4 * M * a.lds));
  float* offset_scale = nullptr;
  if (const int k_code = b.offset_code(); k_code > 0) {
    const int64_t blocks = q_blocks(K);
    parallel_for(M, 64, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t blk = 0; blk < blocks; ++blk) ints[m * a.lds + blk] = -k_code * a.sum[m * a.lds + blk];
    });
  } else {
    offset_scale = static_cast<float*>(scale_buf.get(4 * M));
    offset_sums(a, M, K, ints, offset_scale);
  }
  const QPlan p = make_plan(M, N, K, a, b, c, ldc, accumulate, ints, offset_scale, update);
  const Grid grid = thread_grid(M, N, p, num_threads());
  const int64_t n_units = (N + p.n_unit - 1) / p.n_unit, m_units = (M + p.ks->mr - 1) / p.ks->mr;
  parallel_for(grid.tn * grid.tm, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t in = t % grid.tn, im = t / grid.tn;
      const int64_t n0 = n_units * in / grid.tn * p.n_unit, n1 = n_units * (in + 1) / grid.tn * p.n_unit;
      const int64_t m0 = m_units * im / grid.tm * p.ks->mr, m1 = m_units * (im + 1) / grid.tm * p.ks->mr;
      if (n0 < n1 && m0 < m1) run_block(p, m0, std::min(M, m1), n0, std::min(N, n1));
    }
  });
}

}  // namespace ggtune::gemm
