// AVX-512 VNNI variants of the int8 GEMM pieces (qgemm.h): the MR x 32 micro-kernel on
// vpdpbusd, the Q8 quantization of activation rows, and the requantization of float tiles
// into packed u8 columns.
#include <immintrin.h>

#include <array>
#include <cstring>
#include <utility>

#include "gemm/qgemm.h"
#include "transpose_avx512.h"

namespace ggtune::gemm {
namespace {

constexpr int kMr = 6;  // 12 int32 + 12 float accumulators fit the 32 zmm registers

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// acc += the update (LowRankUpdate), rank by rank: the M x 2 FMAs of one rank are independent.
// With scale 1 (graph.py folds s into Bᵀ) u is broadcast straight from memory, a load: a scaled
// u costs a multiply and a broadcast on the FMA pipes, as much as the FMAs themselves.
template <int M, bool UnitScale>
inline void add_ranks(const LowRankUpdate& up, __m512 (&acc)[M][2], __mmask16 m0, __mmask16 m1) {
  for (int64_t k = 0; k < up.r; ++k) {
    const float* vk = up.v + k * up.ldv;
    const __m512 v0 = _mm512_maskz_loadu_ps(m0, vk), v1 = _mm512_maskz_loadu_ps(m1, vk + 16);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const float uk = up.u[i * up.ldu + k];
      const __m512 u = _mm512_set1_ps(UnitScale ? uk : up.scale * uk);
      acc[i][0] = _mm512_fmadd_ps(u, v0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(u, v1, acc[i][1]);
    }
  }
}

template <int M>
inline void add_update(const LowRankUpdate& up, __m512 (&acc)[M][2], __mmask16 m0, __mmask16 m1) {
  if (up.scale == 1.0f) add_ranks<M, true>(up, acc, m0, m1);  // the same bits: 1 * u == u
  else add_ranks<M, false>(up, acc, m0, m1);
}

// The offsets of an affine strip, acc = their integer sum times the column's and the row's
// scale: A's offset codes meet B's, two blocks per vpdpwssd, in a loop of their own before the
// blocks' (fused into it, their 12 int32 accumulators would not fit beside the blocks' 24).
template <int M>
inline void offsets_sum(int64_t blocks, const int32_t* ints, const float* offset_scale,
                        int64_t lds, const uint8_t* b, __m512 (&acc)[M][2]) {
  __m512i off[M][2];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) off[i][0] = off[i][1] = _mm512_setzero_si512();
  for (int64_t p = 0; 2 * p < blocks; ++p) {  // the pair's codes: its even block's c slot
    const uint8_t* pair = b + 2 * p * kQBlockBytes + kQOffsetSlot;
    const __m512i c0 = _mm512_load_si512(pair), c1 = _mm512_load_si512(pair + 64);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m512i sa = _mm512_set1_epi32(ints[i * lds + p]);
      off[i][0] = _mm512_dpwssd_epi32(off[i][0], c0, sa);
      off[i][1] = _mm512_dpwssd_epi32(off[i][1], c1, sa);
    }
  }
  const auto* cs = reinterpret_cast<const float*>(b + blocks * kQBlockBytes);
  const __m512 c0 = _mm512_load_ps(cs), c1 = _mm512_load_ps(cs + 16);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    const __m512 rs = _mm512_set1_ps(offset_scale[i]);
    acc[i][0] = _mm512_mul_ps(_mm512_cvtepi32_ps(off[i][0]), _mm512_mul_ps(c0, rs));
    acc[i][1] = _mm512_mul_ps(_mm512_cvtepi32_ps(off[i][1]), _mm512_mul_ps(c1, rs));
  }
}

// acc += the blocks' scaled dot products of M rows and 32 columns; with symmetric B each
// block's dot starts at ints (-k * sum(qa)).
template <int M, bool Affine, bool ColumnScaled>
inline void q_blocks_sum(int64_t blocks, const int8_t* a, int64_t lda, const float* ad,
                         const int32_t* ints, int64_t lds, const uint8_t* b, __m512 (&acc)[M][2]) {
  for (int64_t blk = 0; blk < blocks; ++blk, b += kQBlockBytes) {
    __m512i dot[M][2];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i)
      dot[i][0] = dot[i][1] = Affine ? _mm512_setzero_si512() : _mm512_set1_epi32(ints[i * lds + blk]);
    const int8_t* ab = a + blk * kQBlock;
#pragma GCC unroll 8
    for (int g = 0; g < kQBlock / 4; ++g) {
      const __m512i b0 = _mm512_load_si512(b + g * 4 * kQNr);
      const __m512i b1 = _mm512_load_si512(b + g * 4 * kQNr + 64);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const __m512i av = _mm512_set1_epi32(load_i32(ab + i * lda + 4 * g));
        dot[i][0] = _mm512_dpbusd_epi32(dot[i][0], b0, av);
        dot[i][1] = _mm512_dpbusd_epi32(dot[i][1], b1, av);
      }
    }
    const auto* dc = reinterpret_cast<const float*>(b + kQCodeBytes);
    const __m512 d0 = _mm512_load_ps(dc), d1 = _mm512_load_ps(dc + 16);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const __m512 da = _mm512_set1_ps(ad[i * lds + blk]);
      if (ColumnScaled) {  // d waits for the end: acc = d * sum(da * dot)
        acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][0]), da, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][1]), da, acc[i][1]);
        continue;
      }
      acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][0]), _mm512_mul_ps(d0, da), acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][1]), _mm512_mul_ps(d1, da), acc[i][1]);
    }
  }
}

template <int M, bool Affine, bool ColumnScaled>
void q_kernel(int64_t blocks, const int8_t* a, int64_t lda, const float* ad, const int32_t* ints,
              const float* offset_scale, int64_t lds, const uint8_t* b, float* c, int64_t ldc,
              int n, bool accumulate, const LowRankUpdate* update) {
  __m512 acc[M][2];
  if (Affine) {
    offsets_sum<M>(blocks, ints, offset_scale, lds, b, acc);
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  }
  q_blocks_sum<M, Affine, ColumnScaled>(blocks, a, lda, ad, ints, lds, b, acc);
  if (ColumnScaled && blocks > 0) {
    const auto* dc = reinterpret_cast<const float*>(b + (blocks - 1) * kQBlockBytes + kQCodeBytes);
    const __m512 d0 = _mm512_load_ps(dc), d1 = _mm512_load_ps(dc + 16);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      acc[i][0] = _mm512_mul_ps(acc[i][0], d0);
      acc[i][1] = _mm512_mul_ps(acc[i][1], d1);
    }
  }
  const __mmask16 m0 = first_lanes(n), m1 = first_lanes(n - 16);
  if (accumulate) {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, c + i * ldc));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, c + i * ldc + 16));
    }
  }
  if (update) add_update<M>(*update, acc, m0, m1);
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, m0, acc[i][0]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, m1, acc[i][1]);
  }
}

template <bool Affine, bool ColumnScaled, size_t... I>
constexpr auto kernel_rows(std::index_sequence<I...>) {
  return std::array<QMicroKernel, sizeof...(I)>{
      [](int64_t blocks, const int8_t* a, int64_t lda, const float* ad, const int32_t* ints,
         const float* offset_scale, int64_t lds, const uint8_t* b, float* c, int64_t ldc, int,
         int n, bool accumulate, const LowRankUpdate* update) {
        q_kernel<int(I) + 1, Affine, ColumnScaled>(blocks, a, lda, ad, ints, offset_scale, lds, b,
                                                   c, ldc, n, accumulate, update);
      }...};
}

constexpr auto kAffineRows = kernel_rows<true, false>(std::make_index_sequence<kMr>());
constexpr auto kSymmetricRows = kernel_rows<false, false>(std::make_index_sequence<kMr>());
constexpr auto kColumnScaledRows = kernel_rows<false, true>(std::make_index_sequence<kMr>());

template <const auto& Rows>
void q_kernel_rows(int64_t blocks, const int8_t* a, int64_t lda, const float* ad,
                   const int32_t* ints, const float* offset_scale, int64_t lds, const uint8_t* b,
                   float* c, int64_t ldc, int m, int n, bool accumulate,
                   const LowRankUpdate* update) {
  Rows[m - 1](blocks, a, lda, ad, ints, offset_scale, lds, b, c, ldc, m, n, accumulate, update);
}

// x * inv rounded to nearest even, as int32 lanes.
inline __m512i round_scaled(__m512 x, __m512 inv) {
  return _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));
}

}  // namespace

const QKernelSet& q_kernels_avx512() {
  static const QKernelSet set{kMr, q_kernel_rows<kAffineRows>, q_kernel_rows<kSymmetricRows>,
                              q_kernel_rows<kColumnScaledRows>};
  return set;
}

namespace {

// Sixteen vectors reduced lane-wise to one: lane b = op over v[b]'s 16 lanes. Four levels of
// shuffles halve the lanes each vector holds (15 ops of each kind, against ~8 per vector for
// one horizontal reduction at a time); the last permute puts block b in lane b.
template <typename Op>
inline __m512 reduce_sixteen(__m512 (&v)[16], Op op) {
  for (int i = 0; i < 8; ++i)  // quarters 0-1: v[i], 2-3: v[i + 8]
    v[i] = op(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  for (int i = 0; i < 4; ++i)  // quarters: v[i], v[i + 8], v[i + 4], v[i + 12]
    v[i] = op(_mm512_shuffle_f32x4(v[i], v[i + 4], 0x88), _mm512_shuffle_f32x4(v[i], v[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)  // per quarter: two lanes from v[i], two from v[i + 2]
    v[i] = op(_mm512_shuffle_ps(v[i], v[i + 2], 0x44), _mm512_shuffle_ps(v[i], v[i + 2], 0xEE));
  const __m512 r = op(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
  // lane 4q + j holds block base[q] + {0, 2, 1, 3}[j], base = {0, 8, 4, 12}
  const __m512i block_lane = _mm512_set_epi32(15, 13, 14, 12, 7, 5, 6, 4, 11, 9, 10, 8, 3, 1, 2, 0);
  return _mm512_permutexvar_ps(block_lane, r);
}

// One block of a row: x[k0, min(K, k0 + 32)), zero past K.
void quantize_block(const float* x, int64_t K, int64_t b, int8_t* q, float* d, float* s,
                    int32_t* sum) {
  const int64_t k0 = b * kQBlock;
  const __m512 v0 = _mm512_maskz_loadu_ps(first_lanes(K - k0), x + k0);
  const __m512 v1 = _mm512_maskz_loadu_ps(first_lanes(K - k0 - 16), x + k0 + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float poison =
      _mm512_reduce_add_ps(_mm512_add_ps(_mm512_sub_ps(v0, v0), _mm512_sub_ps(v1, v1)));
  const __m512 inv = _mm512_set1_ps(amax != 0.0f && poison == 0.0f ? 127.0f / amax : 0.0f);
  const __m512i q0 = round_scaled(v0, inv), q1 = round_scaled(v1, inv);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0), _mm512_cvtsepi32_epi8(q0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0 + 16), _mm512_cvtsepi32_epi8(q1));
  d[b] = amax / 127.0f + poison;
  sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  s[b] = d[b] * float(sum[b]);
}

// Sixteen whole blocks of a row (512 values): codes, d, s, sum, the same bits as quantize_block.
// False, with nothing written, when they hold an inf or NaN (quantize_block poisons just its block).
bool quantize_sixteen_blocks(const float* x, int8_t* q, float* d, float* s, int32_t* sum) {
  __m512 amax[16], poison = _mm512_setzero_ps();
  for (int b = 0; b < 16; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
    amax[b] = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    poison = _mm512_add_ps(poison, _mm512_add_ps(_mm512_sub_ps(v0, v0), _mm512_sub_ps(v1, v1)));
  }
  if (_mm512_cmp_ps_mask(poison, _mm512_setzero_ps(), _CMP_EQ_OQ) != 0xffff) return false;
  const __m512 m = reduce_sixteen(amax, [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); });
  const __m512 inv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NEQ_OQ),
                                         _mm512_set1_ps(127.0f), m);
  const __m512 dq = _mm512_div_ps(m, _mm512_set1_ps(127.0f));
  alignas(64) float invs[16];
  _mm512_store_ps(invs, inv);
  __m512 sums[16];
  for (int b = 0; b < 16; ++b) {
    const __m512 ib = _mm512_set1_ps(invs[b]);
    const __m512i q0 = round_scaled(_mm512_loadu_ps(x + 32 * b), ib);
    const __m512i q1 = round_scaled(_mm512_loadu_ps(x + 32 * b + 16), ib);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * b), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * b + 16), _mm512_cvtsepi32_epi8(q1));
    sums[b] = _mm512_castsi512_ps(_mm512_add_epi32(q0, q1));
  }
  const __m512i total = _mm512_castps_si512(reduce_sixteen(sums, [](__m512 a, __m512 b) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }));
  _mm512_storeu_ps(d, dq);
  _mm512_storeu_si512(sum, total);
  _mm512_storeu_ps(s, _mm512_mul_ps(dq, _mm512_cvtepi32_ps(total)));
  return true;
}

}  // namespace

bool quantize_row_q8_avx512(const float* x, int64_t K, int8_t* q, float* d, float* s,
                            int32_t* sum) {
  const int64_t blocks = q_blocks(K);
  int64_t b = 0;
  for (; (b + 16) * kQBlock <= K; b += 16)  // sixteen whole blocks at a time
    if (!quantize_sixteen_blocks(x + b * kQBlock, q + b * kQBlock, d + b, s + b, sum + b))
      for (int64_t i = b; i < b + 16; ++i) quantize_block(x, K, i, q, d, s, sum);
  for (; b < blocks; ++b) quantize_block(x, K, b, q, d, s, sum);
  return true;
}

bool offset_sums_row_avx512(const float* s, int64_t blocks, int32_t* pairs, float* scale) {
  __m512 amax = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; b += 16)  // max(|v|, amax): a NaN v gives amax, skipped
    amax = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(first_lanes(blocks - b), s + b)), amax);
  const float m = _mm512_reduce_max_ps(amax);
  const __m512 inv = _mm512_set1_ps(m != 0.0f ? float(kOffsetSumMax) / m : 0.0f);
  for (int64_t b = 0; b < blocks; b += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(first_lanes(blocks - b), s + b);
    const __m512i codes = _mm512_maskz_cvtps_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), _mm512_mul_ps(v, inv));
    // 16 int16 codes, in order: 8 pairs, the even block in the low half (lanes past blocks are 0)
    _mm256_mask_storeu_epi32(pairs + b / 2, __mmask8(first_lanes((blocks - b + 1) / 2)),
                             _mm512_cvtepi32_epi16(codes));
  }
  *scale = m / float(kOffsetSumMax);
  return true;
}

bool put_q_columns_avx512(uint8_t* panel, int64_t blocks, int64_t j, int64_t count,
                          const uint8_t* codes, int64_t ld, const float* d, const float* c,
                          int64_t ldd) {
  if (count != 16 || j % 16 != 0 || ld % 4 != 0) return false;
  // Lane i reads column j + i: offsets i * ldd into d and c.
  const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i scale_rows = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(int32_t(ldd)));
  const int64_t lane = j % kQNr;
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* block = q_block_at(panel, blocks, j, b);
    // group g, lane i: column i's codes 4g..4g+3 (a register transpose, not eight gathers)
    __m512i group[kQBlock / 4];
    transpose_16x8_dwords(codes + b * kQBlock, ld, group);
    for (int g = 0; g < kQBlock / 4; ++g) _mm512_storeu_si512(block + (g * kQNr + lane) * 4, group[g]);
    _mm512_storeu_ps(reinterpret_cast<float*>(block + kQCodeBytes) + lane,
                     _mm512_i32gather_ps(scale_rows, d + b, 4));
  }
  if (!c) return true;
  // Offsets (put_q_offsets_scalar): the columns' amax over the blocks, then codes by pairs.
  __m512 amax = _mm512_setzero_ps(), poison = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m512 v = _mm512_i32gather_ps(scale_rows, c + b, 4);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    poison = _mm512_add_ps(poison, _mm512_sub_ps(v, v));
  }
  const __mmask16 finite_nonzero = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_NEQ_OQ) &
                                   _mm512_cmp_ps_mask(poison, _mm512_setzero_ps(), _CMP_EQ_OQ);
  const __m512 inv = _mm512_maskz_div_ps(finite_nonzero, _mm512_set1_ps(float(kOffsetCodeMax)), amax);
  for (int64_t b = 0; b < blocks; b += 2) {
    const __m512i lo = round_scaled(_mm512_i32gather_ps(scale_rows, c + b, 4), inv);
    const __m512i hi = b + 1 < blocks ? round_scaled(_mm512_i32gather_ps(scale_rows, c + b + 1, 4), inv)
                                      : _mm512_setzero_si512();
    const __m512i pair = _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xffff)),
                                         _mm512_slli_epi32(hi, 16));
    _mm512_storeu_si512(q_block_at(panel, blocks, j, b) + kQOffsetSlot + 4 * lane, pair);
  }
  _mm512_storeu_ps(reinterpret_cast<float*>(q_strip_tail(panel, blocks, j)) + lane,
                   _mm512_add_ps(_mm512_div_ps(amax, _mm512_set1_ps(float(kOffsetCodeMax))), poison));
  return true;
}

bool column_amax_avx512(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax,
                        float* poison) {
  for (int64_t j = 0; j < nc; j += 16) {
    const __mmask16 mask = first_lanes(nc - j);
    __m512 m = _mm512_setzero_ps(), p = _mm512_setzero_ps();
    for (int64_t r = 0; r < kc; ++r) {
      const __m512 v = _mm512_maskz_loadu_ps(mask, tile + r * ld + j);
      m = _mm512_max_ps(m, _mm512_abs_ps(v));
      p = _mm512_add_ps(p, _mm512_sub_ps(v, v));
    }
    _mm512_mask_storeu_ps(amax + j, mask, m);
    _mm512_mask_storeu_ps(poison + j, mask, p);
  }
  return true;
}

bool quantize_tile_avx512(const float* tile, int64_t ld, int64_t kc, int64_t nc,
                          const float* amax, const float* poison, uint8_t* panel) {
  const int64_t blocks = q_blocks(kc);
  const __m512i bias = _mm512_set1_epi32(128);
  for (int64_t j = 0; j < nc; j += 16) {  // 16 columns, never across two strips
    const __mmask16 mask = first_lanes(nc - j);
    const int64_t lane = j % kQNr;
    const __m512 m = _mm512_maskz_loadu_ps(mask, amax + j), p = _mm512_maskz_loadu_ps(mask, poison + j);
    const __mmask16 finite_nonzero = _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NEQ_OQ) &
                                     _mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_EQ_OQ);
    const __m512 inv = _mm512_maskz_div_ps(finite_nonzero, _mm512_set1_ps(127.0f), m);
    const __m512 dq = _mm512_add_ps(_mm512_div_ps(m, _mm512_set1_ps(127.0f)), p);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kQBlock, rows = std::min<int64_t>(kQBlock, kc - r0);
      const float* src = tile + r0 * ld + j;
      uint8_t* block = q_block_at(panel, blocks, j, b);
      for (int g = 0; g < kQBlock / 4; ++g) {
        __m512i word = _mm512_setzero_si512();
        for (int t = 0; t < 4; ++t) {
          const int64_t r = 4 * g + t;
          const __m512i code =
              r < rows ? _mm512_add_epi32(round_scaled(_mm512_maskz_loadu_ps(mask, src + r * ld), inv), bias)
                       : bias;
          word = _mm512_or_si512(word, _mm512_slli_epi32(code, 8 * t));
        }
        _mm512_mask_storeu_epi32(block + (g * kQNr + lane) * 4, mask, word);
      }
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(block + kQCodeBytes) + lane, mask, dq);
    }
  }
  return true;
}

}  // namespace ggtune::gemm
