// The GEMM engine: C[M, N] = alpha * A[M, K] @ B[K, N] + beta * C, built like a BLAS.
//
// Shapes: M output rows (tokens T), N output columns, K the reduced dimension.
//
// A is a float32 matrix with arbitrary strides. B comes from a BOperand, which hands
// out float views of tiles of B: a plain float matrix, or a GGUF weight that is
// dequantized tile by tile (csrc/ops/matmul.cpp), so a quantized matrix is never
// expanded as a whole. The engine copies both operands into packed panels (pack.h)
// sized for the caches, then sweeps register-blocked micro-kernels over them
// (kernels.h: one per CPU tier, scalar reference always compiled).
//
// Precision: f32 multiplies in float32 with FMA. bf16 rounds both operands to bfloat16
// (round to nearest even, 8-bit mantissa) and accumulates in float32: on the avx512 tier
// with vdpbf16ps (about 3x the float32 throughput), on the other tiers by the float32
// kernel on operands rounded the same way, so every tier computes the same products.
//
// Threads: the output is cut into one static block per thread (along N or M, whichever
// duplicates less packing), and each thread reduces K in the same fixed order, so results
// do not depend on the thread count or on scheduling.
#pragma once

#include <cstdint>

#include "gemm/epilogue.h"

namespace ggtune::gemm {

// int8 is the int8 engine's (qgemm.h), chosen per weight in ops/matmul.cpp; run() takes f32
// and bf16 only.
enum class Precision { f32, bf16, int8 };

// Read-only view of a float32 matrix: element (r, c) is p[r * rs + c * cs].
struct FloatView {
  const float* p;
  int64_t rs, cs;
  float at(int64_t r, int64_t c) const { return p[r * rs + c * cs]; }
  FloatView offset(int64_t r, int64_t c) const { return {p + r * rs + c * cs, rs, cs}; }
  FloatView transposed() const { return {p, cs, rs}; }
};

// The B operand, a logical float matrix B[K, N].
class BOperand {
 public:
  virtual ~BOperand() = default;
  // Tile boundaries must be multiples of these along K and N (a quant block must be
  // dequantized whole); the ends of B themselves are always allowed.
  virtual int64_t k_align() const { return 1; }
  virtual int64_t n_align() const { return 1; }
  // Packing the weight costs this much more per element than packing A (dequantization);
  // the thread split uses it to decide which operand may be packed twice.
  virtual double pack_cost() const { return 1.0; }
  // Largest tile view() is asked for at once, given the panel being packed (kc x nc)
  // and the strip width nr: at most *tile_k x *tile_n, with *tile_k even or the panel's kc.
  virtual void tile_shape(int64_t kc, int64_t nc, int64_t nr, int64_t* tile_k,
                          int64_t* tile_n) const {
    *tile_k = kc;
    *tile_n = nc;
  }
  // Floats view() may write to scratch for a tile of tile_k x tile_n.
  virtual int64_t scratch_floats(int64_t tile_k, int64_t tile_n) const { return 0; }
  // View of B[k0 : k0 + kc, n0 : n0 + nc]; may dequantize into scratch.
  virtual FloatView view(int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* scratch) const = 0;
};

// B given as a float matrix.
class FloatB final : public BOperand {
 public:
  explicit FloatB(FloatView b) : b_(b) {}
  FloatView view(int64_t k0, int64_t, int64_t n0, int64_t, float*) const override {
    return b_.offset(k0, n0);
  }

 private:
  FloatView b_;
};

// Output: element (m, n) is c[m * rs + n * cs].
struct OutView {
  float* p;
  int64_t rs, cs;
};

// C = alpha * A @ B + beta * C; with beta == 0, C is not read (it may hold garbage).
// epilogue (optional; C row-major, c.cs == 1) then runs on every tile of C (epilogue.h).
void run(int64_t M, int64_t N, int64_t K, FloatView a, const BOperand& b, OutView c,
         float alpha, float beta, Precision precision, const TileEpilogue* epilogue = nullptr);

// Plain float32 GEMM (LoRA factors, attention): out[M, N] = alpha * op(a) @ op(b) + beta * out,
// with op(a)[M, K] and op(b)[K, N]; a, b, out row-major with leading dimensions lda, ldb, ldc.
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, bool trans_a,
              const float* b, int64_t ldb, bool trans_b, float* out, int64_t ldc, float alpha,
              float beta);

}  // namespace ggtune::gemm
