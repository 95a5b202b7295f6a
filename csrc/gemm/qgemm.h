// The int8 GEMM engine: C[M, N] (= or +=) A[M, K] @ B[K, N] with integer dot products.
//
// Both operands are cut into blocks of 32 along K, each with its own float scale:
//   A (activations) as Q8:      a[m, k] = da[m, b] * qa[m, k]          qa int8 in [-127, 127]
//   B (weights) as affine u8:   b[k, n] = db[n, b] * ub[k, n] + cb[n, b]   ub uint8
// so one block of the product is
//   sum_k a b = da * db * sum_k qa ub  +  cb * sa,     sa[m, b] = da * sum_k qa
// and sum_k qa ub is what vpdpbusd (AVX512-VNNI) computes, 64 byte products per instruction:
// twice the multiply-adds per cycle of float32 FMA on the CPUs ggtune is tuned on.
//
// The offset term sum_b cb sa is itself a product, over blocks, done in integers too: cb as
// int16 codes with one scale per column and panel (|code| <= kOffsetCodeMax), sa as int16 codes
// with one scale per row of A (|code| <= kOffsetSumMax), two blocks per vpdpwssd, one float
// multiply per panel, in place of two float multiply-adds per 16 outputs and block beside the
// 16 vpdpbusd (measured on Zen 4, 1 thread: Q4_1 576 -> 1536 296 -> 311 GOP/s; 1536 -> 576
// unchanged). Its rounding, 2^-12 of the column's largest offset and 2^-16 of the row's largest
// sa, is of the order of llama.cpp's own (it stores sa as float16) and far below the
// activations' (2^-8 of each block's amax). Symmetric weights (cb = -k db exactly) need no
// offset term at all (offset_code below).
//
// Every GGUF weight type fits the B form: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K blocks map to it
// exactly (their codes, shifted to unsigned, with the block's scale and offset); any other
// weight is requantized to 8 bits per 32 values when packed (as A is), and weights read across
// their rows (the backward product) to 8 bits with one scale per column and panel
// (quantize_tile): no GGUF rounding to match there, and the kernel's per-block float work
// halves. A is quantized once per call (quantize_rows_q8).
//
// Layout of a packed B panel: strips of kQNr columns; a strip is kb blocks one after the other,
// each kQBlockBytes long, then the columns' offset scales:
//   block: codes [8][kQNr][4] uint8   (group g holds k = 4g..4g+3 of every column: vpdpbusd's operand)
//          d     [kQNr] float32
//          c     [kQNr][2] int16      (even blocks b only: column j's offset codes of blocks b
//                                      and b + 1, vpdpwssd's operand; 0 past the panel's end)
//   tail:  offset scale [kQNr] float32
// Columns past N have d = c = 0. K past the end of A is zero in qa, so B's values there do not
// matter. Symmetric panels leave c and the tail unwritten.
#pragma once

#include <cstdint>

#include "gemm/epilogue.h"

namespace ggtune::gemm {

constexpr int kQBlock = 32;  // values per scale along K
constexpr int kQNr = 32;     // columns per packed strip
constexpr int64_t kQCodeBytes = kQBlock * kQNr;
constexpr int64_t kQBlockBytes = kQCodeBytes + 2 * kQNr * 4;
// A panel is at most this deep (a whole K up to it; deeper K is cut into equal panels).
constexpr int64_t kMaxKc = 1024;
// Offset codes: a panel's integer offset sum, kMaxKc / kQBlock products of at most
// kOffsetCodeMax * kOffsetSumMax, must fit int32 (vpdpwssd wraps).
constexpr int32_t kOffsetCodeMax = 2047;
constexpr int32_t kOffsetSumMax = 32767;
static_assert(kMaxKc / kQBlock * int64_t(kOffsetCodeMax) * kOffsetSumMax <= INT32_MAX);

inline int64_t q_blocks(int64_t k) { return (k + kQBlock - 1) / kQBlock; }
inline int64_t q_strip_bytes(int64_t blocks) { return blocks * kQBlockBytes + kQNr * 4; }
constexpr int64_t kQOffsetSlot = kQCodeBytes + kQNr * 4;  // a block's c slot (layout below)

// A quantized: rows of ldq int8 codes (K rounded up to 32, zero past K) and per block
// d, s = d * sum(codes) and the integer sum itself, ld lds.
struct QuantizedA {
  const int8_t* q;
  int64_t ldq;
  const float* d;
  const float* s;
  const int32_t* sum;
  int64_t lds;
};

// x[M, K] (row stride ldx) -> codes q[M, ldq], d, s and sum [M, lds] (lds >= q_blocks(K)).
// Per block: d = amax / 127, q = round-to-nearest-even(x * 127 / amax). Runs on active_isa().
void quantize_rows_q8(const float* x, int64_t M, int64_t K, int64_t ldx, int8_t* q, int64_t ldq,
                      float* d, float* s, int32_t* sum, int64_t lds);
void quantize_row_q8_scalar(const float* x, int64_t K, int8_t* q, float* d, float* s, int32_t* sum);
bool quantize_row_q8_avx512(const float* x, int64_t K, int8_t* q, float* d, float* s, int32_t* sum);

// The B operand, a logical matrix B[K, N], packed panel by panel.
class QuantBOperand {
 public:
  virtual ~QuantBOperand() = default;
  // Panel boundaries along K are multiples of this (a multiple of kQBlock), and along N of
  // n_align(); B's own ends are always allowed.
  virtual int64_t k_align() const { return kQBlock; }
  virtual int64_t n_align() const { return 1; }
  // k > 0 when every block of B has c = -k * d exactly (Q4_0: 8, Q5_0: 16, Q8_0 and requantized
  // weights: 128): a block then sums to d * da * (sum qa ub - k * sum qa), an integer the
  // micro-kernel starts from -k * sum qa instead of adding c * sa in float (one FMA fewer per
  // 16 outputs and block, ~10% of the kernel's time). 0: any c (Q4_1, Q5_1, K-quants).
  virtual int offset_code() const { return 0; }
  // True when pack() gives every column one d over the whole panel (with offset_code() > 0):
  // a block then needs one float multiply-add per 16 outputs, not two (the scale product).
  virtual bool column_scaled() const { return false; }
  // Floats of scratch pack() may use for a kc x nc panel.
  virtual int64_t scratch_floats(int64_t kc, int64_t nc) const { return 0; }
  // Packs B[k0 : k0 + kc, n0 : n0 + nc] into `panel` (layout above, q_blocks(kc) blocks per
  // strip, columns past nc in the last strip zeroed by the caller).
  virtual void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, uint8_t* panel,
                    float* scratch) const = 0;
};

// Address of block b of the strip holding panel column j, and j's lane in it.
inline uint8_t* q_block_at(uint8_t* panel, int64_t blocks, int64_t j, int64_t b) {
  return panel + (j / kQNr) * q_strip_bytes(blocks) + b * kQBlockBytes;
}

// The strip holding column j: its tail, the offset scales after its `blocks` blocks.
inline uint8_t* q_strip_tail(uint8_t* panel, int64_t blocks, int64_t j) {
  return panel + (j / kQNr) * q_strip_bytes(blocks) + blocks * kQBlockBytes;
}

// Writes one column's block: 32 codes (k order) and its scale; lane = column % kQNr.
void put_q_column(uint8_t* block, int lane, const uint8_t* codes, float d);

// Writes `count` panel columns j.. from unpacked rows: column j + i has its codes at
// codes[i * ld ...] (`blocks` blocks of 32) and its scales at d[i * ldd ...]; with c, its
// offsets c[i * ldd ...] as offset codes and scale (put_q_offsets_scalar). Runs on active_isa(); the
// avx512 variant covers 16 columns from a multiple of 16.
void put_q_columns(uint8_t* panel, int64_t blocks, int64_t j, int64_t count, const uint8_t* codes,
                   int64_t ld, const float* d, const float* c, int64_t ldd);
bool put_q_columns_avx512(uint8_t* panel, int64_t blocks, int64_t j, int64_t count,
                          const uint8_t* codes, int64_t ld, const float* d, const float* c,
                          int64_t ldd);
// The offsets of put_q_columns: column j + i's c[i * ldd ...] over the panel's blocks as codes
// round-half-even(c / scale), scale = max |c| / kOffsetCodeMax (NaN when one is inf or NaN).
void put_q_offsets_scalar(uint8_t* panel, int64_t blocks, int64_t j, int64_t count,
                          const float* c, int64_t ldd);

// A's offset codes (kernel argument `ints` of affine B): per row m, ld lds, the codes of its
// sa over q_blocks(K) blocks: codes round-half-even(sa / scale), two blocks per int32 (0 past
// the last), scale[m] = max |sa| / kOffsetSumMax (NaN sa, a row with an inf or NaN: code 0;
// its block scale is NaN already).
void offset_sums(const QuantizedA& a, int64_t M, int64_t K, int32_t* pairs, float* scale);
// One row's codes from its blocks' sa (s[0 : blocks]) into pairs[0 : (blocks + 1) / 2], its scale.
void offset_sums_row_scalar(const float* s, int64_t blocks, int32_t* pairs, float* scale);
bool offset_sums_row_avx512(const float* s, int64_t blocks, int32_t* pairs, float* scale);

// The backward's requantization of a float panel tile[k * ld + j] (k < kc, j < nc) into a packed
// panel of q_blocks(kc) blocks per strip: per column one scale d = amax / 127 over the whole
// panel (NaN when the column holds an inf or NaN; its kernel multiplies by d once per panel
// instead of once per block) and codes = round(x / d) + 128.
//
// amax[j] = max |x| and poison[j] = sum of x - x over the column's rows [0, kc).
void column_amax(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax, float* poison);
// Codes for rows [0, kc) (a last partial block padded with code 128: zero) with the scales of
// column_amax's amax and poison. Runs on active_isa().
void quantize_tile(const float* tile, int64_t ld, int64_t kc, int64_t nc, const float* amax,
                   const float* poison, uint8_t* panel);
void column_amax_scalar(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax,
                        float* poison);
void quantize_tile_scalar(const float* tile, int64_t ld, int64_t kc, int64_t nc,
                          const float* amax, const float* poison, uint8_t* panel);
bool column_amax_avx512(const float* tile, int64_t ld, int64_t kc, int64_t nc, float* amax,
                        float* poison);
bool quantize_tile_avx512(const float* tile, int64_t ld, int64_t kc, int64_t nc,
                          const float* amax, const float* poison, uint8_t* panel);

// Micro-kernel: an m x n tile (m <= MR, n <= kQNr) of C from `blocks` blocks of one B strip
// (starting at an even block of the panel for `affine`) and m rows of A from the same block:
// c (= or +=) sum over the blocks, then + the update (already at the tile: LowRankUpdate::at)
// when not nullptr, in registers. Per row i of A, ad[i * lds ...] are its block scales and
// ints[i * lds ...] its integers:
// - affine: any offsets. ints holds the row's offset codes, two blocks per int32 (low half the
//   even block; offset_sums), and offset_scale[i] their scale.
// - symmetric: B has c = -k d (offset_code); ints holds -k * sum(qa) per block.
// - column_scaled: symmetric, and each column's d the same in all the strip's blocks
//   (QuantBOperand::column_scaled), applied once after the blocks' sum.
using QMicroKernel = void (*)(int64_t blocks, const int8_t* a, int64_t lda, const float* ad,
                              const int32_t* ints, const float* offset_scale, int64_t lds,
                              const uint8_t* b, float* c, int64_t ldc, int m, int n,
                              bool accumulate, const LowRankUpdate* update);

struct QKernelSet {
  int mr;  // rows of A per call, every kernel of the set
  QMicroKernel affine;
  QMicroKernel symmetric;
  QMicroKernel column_scaled;
};

const QKernelSet& q_kernels_scalar();
const QKernelSet& q_kernels_avx512();  // x86-64 only
const QKernelSet& active_q_kernels();

// C[M, N] (= or +=) A @ B; c row-major with leading dimension ldc. K is A's logical depth.
// update (optional) is added to C by the micro-kernels (epilogue.h).
void run_q8(int64_t M, int64_t N, int64_t K, const QuantizedA& a, const QuantBOperand& b,
            float* c, int64_t ldc, bool accumulate, const LowRankUpdate* update = nullptr);

}  // namespace ggtune::gemm
