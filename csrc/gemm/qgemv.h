// The int8 matrix-vector path: out[M, N] (= or +=) A[M, K] @ W.T for a few rows of A (decoding
// one token, M = 1), reading W's GGUF blocks in place.
//
// The GEMM engine (qgemm.h) unpacks W into panels and pays for it once per call: at M = 1 that
// unpacking is the whole cost (the panel is read once), and the micro-kernel runs 1 of its 6
// rows. Here each 32-block of a weight row is decoded into its u8 codes in a register and
// multiplied with A's Q8 codes at once (vpdpbusd on 256 bits), 4 weight rows at a time so A's
// codes and scales are loaded once per 4 rows:
//   out[m, n] = sum_b  dw[n, b] * da[m, b] * (u[n, b] . qa[m, b])  +  cw[n, b] * sa[m, b]
// which is the engine's formula over the same codes (integer dots exact), so both paths give
// the same products up to the order of the float sums.
//
// Covered: the types with u8 codes (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 decoded in registers; Q4_K/Q5_K
// unpacked 4 rows at a time into L1, then the same loop) and M <= kGemvMaxRows. Other types
// (requantized by the engine) stay on the engine.
//
// Several weights that share A (q/k/v, gate/up) run in ONE parallel region: their rows are
// concatenated and cut into one static range per thread, so a thread hands over once per group
// instead of once per weight, and small weights (k, v: 192 rows) still use every core.
#pragma once

#include <cstdint>

#include "gemm/qgemm.h"
#include "quant/types.h"

namespace ggtune::gemm {

constexpr int64_t kGemvMaxRows = 4;

// True when run_q8_gemv computes A @ W.T for this type and row count.
bool gemv_covers(GgmlType type, int64_t M);

// One weight of a product: W[n, K] as GGUF rows of row_bytes, out[M, n] with row stride ldo.
struct GemvWeight {
  const uint8_t* w;
  GgmlType type;
  int64_t n;
  int64_t row_bytes;
  float* out;
  int64_t ldo;
};

// For each of the `count` weights: out (= or +=) A @ W.T, A[M, K] quantized (qgemm.h).
// Every weight must satisfy gemv_covers(type, M).
void run_q8_gemv(int64_t M, int64_t K, const QuantizedA& a, const GemvWeight* weights,
                 int64_t count, bool accumulate);

// Bytes of scratch the row functions need for depth K: the codes, scales and offsets of
// kGemvScratchRows unpacked weight rows.
constexpr int64_t kGemvScratchRows = 4;
inline int64_t gemv_scratch_bytes(int64_t K) { return kGemvScratchRows * (K + 8 * q_blocks(K)) + 64; }

// Rows [r0, r1) of one weight. The scalar reference (unpack_row_u8_scalar, then integer dots)
// and the avx512 variant (false when it does not cover the type); scratch: 64-byte aligned,
// gemv_scratch_bytes(K).
void gemv_rows_scalar(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
                      const QuantizedA& a, bool accumulate, uint8_t* scratch);
bool gemv_rows_avx512(const GemvWeight& w, int64_t r0, int64_t r1, int64_t M, int64_t K,
                      const QuantizedA& a, bool accumulate, uint8_t* scratch);

}  // namespace ggtune::gemm
