// The weight as the engine's B operand. Forward reads B = W.T (a panel is a few rows of
// W, each dequantized along K); backward reads B = W (a panel is a band of W's columns,
// each row dequantized over the band). Tile boundaries along W's rows fall on quant blocks.
#include "ops/matmul.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "dispatch.h"
#include "gemm/qgemm.h"
#include "gemm/qgemv.h"
#include "ops/lora.h"
#include "quant/codes.h"
#include "quant/dequant.h"

namespace ggtune {
namespace {

// W[rows, cols] in GGUF bytes.
struct GgufMatrix {
  GgmlType type;
  TypeTraits traits;
  const uint8_t* data;
  int64_t cols;
  int64_t row_bytes;

  GgufMatrix(const uint8_t* w, GgmlType t, int64_t n_cols) : type(t), data(w), cols(n_cols) {
    const TypeTraits* tr = type_traits(static_cast<int32_t>(t));
    if (!tr) throw std::invalid_argument("unsupported GGML type");
    traits = *tr;
    row_bytes = ggtune::row_bytes(traits, cols);
  }
  bool is_f32() const { return type == GgmlType::F32; }
  const float* f32_row(int64_t r) const {
    return reinterpret_cast<const float*>(data + r * row_bytes);
  }
  // The bytes of W[r, c0:]; c0 a multiple of the block size.
  const uint8_t* at(int64_t r, int64_t c0) const {
    return data + r * row_bytes + c0 / traits.block_size * traits.type_size;
  }
  // dst[0:n] = W[r, c0 : c0 + n]; c0 and n multiples of the block size.
  void dequantize(int64_t r, int64_t c0, int64_t n, float* dst) const {
    dequantize_row(type, at(r, c0), dst, n);
  }
  // A quantized tile is dequantized, then packed: about twice the work of packing floats
  // (the SIMD dequantize_row runs at ~0.2 ns per element here, like the packing itself).
  double pack_cost() const { return is_f32() ? 1.0 : 2.0; }
};

// B[k, n] = W[n, k]: forward, reduction along W's rows.
class WeightTransposed final : public gemm::BOperand {
 public:
  explicit WeightTransposed(const GgufMatrix& w) : w_(w) {}
  int64_t k_align() const override { return w_.traits.block_size; }
  double pack_cost() const override { return w_.pack_cost(); }
  // One strip of NR weight rows at a time, each dequantized over the panel's depth.
  void tile_shape(int64_t kc, int64_t nc, int64_t nr, int64_t* tile_k,
                  int64_t* tile_n) const override {
    *tile_k = kc;
    *tile_n = w_.is_f32() ? nc : nr;
  }
  int64_t scratch_floats(int64_t tile_k, int64_t tile_n) const override {
    return w_.is_f32() ? 0 : tile_k * tile_n;
  }
  gemm::FloatView view(int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                       float* scratch) const override {
    if (w_.is_f32()) return {w_.f32_row(n0) + k0, 1, w_.cols};
    for (int64_t n = 0; n < nc; ++n) w_.dequantize(n0 + n, k0, kc, scratch + n * kc);
    return {scratch, 1, kc};
  }

 private:
  const GgufMatrix& w_;
};

// B[k, n] = W[k, n]: backward, reduction across W's rows.
class WeightRows final : public gemm::BOperand {
 public:
  explicit WeightRows(const GgufMatrix& w) : w_(w) {}
  int64_t n_align() const override { return w_.traits.block_size; }
  double pack_cost() const override { return w_.pack_cost(); }
  // A few whole rows of the panel's band at a time (an even count, for bf16 pairs).
  void tile_shape(int64_t kc, int64_t nc, int64_t nr, int64_t* tile_k,
                  int64_t* tile_n) const override {
    *tile_k = w_.is_f32() ? kc : 16;
    *tile_n = nc;
  }
  int64_t scratch_floats(int64_t tile_k, int64_t tile_n) const override {
    return w_.is_f32() ? 0 : tile_k * tile_n;
  }
  gemm::FloatView view(int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                       float* scratch) const override {
    if (w_.is_f32()) return {w_.f32_row(k0) + n0, w_.cols, 1};
    for (int64_t k = 0; k < kc; ++k) w_.dequantize(k0 + k, n0, nc, scratch + k * nc);
    return {scratch, nc, 1};
  }

 private:
  const GgufMatrix& w_;
};

// int8 engine, forward: B[k, n] = W[n, k]. A column is one weight row over the panel's depth:
// its own u8 codes where the type has them, else dequantized and requantized along k as the
// activations are (quantize_rows_q8), its codes shifted to u8.
class CodesTransposed final : public gemm::QuantBOperand {
  static constexpr int64_t kColumns = 16;

 public:
  explicit CodesTransposed(const GgufMatrix& w) : w_(w), codes_(has_u8_codes(w.type)) {}
  int offset_code() const override {
    switch (w_.type) {
      case GgmlType::Q4_0: return 8;
      case GgmlType::Q5_0: return 16;
      case GgmlType::Q8_0: return 128;
      default: return codes_ ? 0 : 128;  // requantized: c = -128 d
    }
  }
  int64_t k_align() const override { return std::lcm<int64_t>(gemm::kQBlock, w_.traits.block_size); }
  int64_t scratch_floats(int64_t kc, int64_t) const override {
    const int64_t blocks = gemm::q_blocks(kc), ldq = blocks * gemm::kQBlock;
    return kColumns * ((codes_ ? 0 : kc + 2 * blocks) + ldq / 4 + 2 * blocks);
  }
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, uint8_t* panel,
            float* scratch) const override {
    // kColumns weight rows at a time: unpacked (or requantized) one after the other, then
    // written together.
    const int64_t blocks = gemm::q_blocks(kc), ldq = blocks * gemm::kQBlock;
    float* d = scratch;
    float* c = d + kColumns * blocks;
    auto* u = reinterpret_cast<uint8_t*>(c + kColumns * blocks);
    float* rows = reinterpret_cast<float*>(u + kColumns * ldq);  // requantized types only
    float* s = rows + kColumns * kc;
    auto* sum = reinterpret_cast<int32_t*>(s + kColumns * blocks);
    for (int64_t n = 0; n < nc; n += kColumns) {
      const int64_t count = std::min(kColumns, nc - n);
      if (codes_) {
        for (int64_t i = 0; i < count; ++i)
          unpack_row_u8(w_.type, w_.at(n0 + n + i, k0), kc, u + i * ldq, d + i * blocks, c + i * blocks);
      } else {
        for (int64_t i = 0; i < count; ++i) w_.dequantize(n0 + n + i, k0, kc, rows + i * kc);
        auto* q = reinterpret_cast<int8_t*>(u);
        gemm::quantize_rows_q8(rows, count, kc, kc, q, ldq, d, s, sum, blocks);
        for (int64_t i = 0; i < count * ldq; ++i) u[i] = uint8_t(q[i] + 128);
      }
      // Symmetric types' offsets are folded into the codes (offset_code): only affine ones go in.
      gemm::put_q_columns(panel, blocks, n, count, u, ldq, d, offset_code() == 0 ? c : nullptr, blocks);
    }
  }

 private:
  const GgufMatrix& w_;
  bool codes_;
};

// int8 engine, backward: B[k, n] = W[k, n], requantized with one scale per column over the
// panel's depth: the panel's weight rows dequantized over its band of columns into scratch once
// (up to 1024 x 256 floats, 1 MB), then the columns' amax, then their codes. Dequantizing twice
// instead (for the amax, then for the codes), to keep the scratch within L1, was 15% of the
// head's backward (perf); this is 9-10% faster there, 1-4% on the layers' shapes (1 thread).
class CodesRows final : public gemm::QuantBOperand {
 public:
  explicit CodesRows(const GgufMatrix& w) : w_(w) {}
  int offset_code() const override { return 128; }  // requantized: c = -128 d
  bool column_scaled() const override { return true; }
  int64_t n_align() const override { return w_.traits.block_size; }
  int64_t scratch_floats(int64_t kc, int64_t nc) const override { return (kc + 2) * nc; }
  void pack(int64_t k0, int64_t kc, int64_t n0, int64_t nc, uint8_t* panel,
            float* scratch) const override {
    float* amax = scratch + kc * nc;
    float* poison = amax + nc;
    for (int64_t r = 0; r < kc; ++r) w_.dequantize(k0 + r, n0, nc, scratch + r * nc);
    gemm::column_amax(scratch, nc, kc, nc, amax, poison);
    gemm::quantize_tile(scratch, nc, kc, nc, amax, poison, panel);
  }

 private:
  const GgufMatrix& w_;
};

// x[T, K] quantized to Q8 blocks, in buffers reused by the calling thread.
struct QuantizedRows {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int32_t> sum;
  gemm::QuantizedA view(const float* x, int64_t T, int64_t K) {
    const int64_t blocks = gemm::q_blocks(K), ldq = blocks * gemm::kQBlock;
    q.resize(std::max<size_t>(q.size(), T * ldq));
    d.resize(std::max<size_t>(d.size(), T * blocks));
    s.resize(std::max<size_t>(s.size(), T * blocks));
    sum.resize(std::max<size_t>(sum.size(), T * blocks));
    gemm::quantize_rows_q8(x, T, K, K, q.data(), ldq, d.data(), s.data(), sum.data(), blocks);
    return {q.data(), ldq, d.data(), s.data(), sum.data(), blocks};
  }
};

QuantizedRows& thread_rows() {
  thread_local QuantizedRows rows;
  return rows;
}

// A LoraTerm over an output of n columns, as each engine takes it: the int8 engine's
// micro-kernels add it in registers, the f32 engine calls the LoRA tile kernel on each tile.
class LoraEpilogue {
 public:
  LoraEpilogue(const LoraTerm* term, int64_t n)
      : term_(term ? *term : LoraTerm{}), n_(n), kernels_(ops::lora_kernels()),
        epilogue_{&apply, this}, update_{term_.z, term_.r, term_.b, n, term_.r, term_.scale} {}
  LoraEpilogue(const LoraEpilogue&) = delete;  // epilogue_ points at this object
  LoraEpilogue& operator=(const LoraEpilogue&) = delete;
  // nullptr without a term.
  const gemm::TileEpilogue* tiles() const { return term_.z ? &epilogue_ : nullptr; }
  const gemm::LowRankUpdate* update() const { return term_.z ? &update_ : nullptr; }
  // The whole output at once (the paths that have no tiles).
  void apply_all(float* out, int64_t T) const {
    if (term_.z) kernels_.expand(term_.z, term_.b, term_.scale, out, T, n_, term_.r);
  }

 private:
  static void apply(const void* ctx, float* c, int64_t ldc, int64_t row, int64_t col, int64_t m,
                    int64_t n) {
    const auto& self = *static_cast<const LoraEpilogue*>(ctx);
    const LoraTerm& t = self.term_;
    self.kernels_.expand_tile(t.z + row * t.r, t.r, t.b + col, self.n_, t.scale, c, ldc, m, n, t.r);
  }

  LoraTerm term_;
  int64_t n_;
  const ops::LoraKernels& kernels_;
  gemm::TileEpilogue epilogue_;
  gemm::LowRankUpdate update_;
};

bool is_float_type(GgmlType type) {
  return type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
}

}  // namespace

gemm::Precision auto_matmul_precision(GgmlType type) {
  return active_isa() == Isa::avx512 && !is_float_type(type) ? gemm::Precision::int8
                                                             : gemm::Precision::f32;
}

void matmul_forward(const float* x, int64_t T, int64_t K, const uint8_t* w, GgmlType type,
                    int64_t N, float* out, bool accumulate, gemm::Precision precision,
                    const LoraTerm* lora) {
  const GgufMatrix weight(w, type, K);
  const LoraEpilogue epilogue(lora, N);
  if (precision == gemm::Precision::int8 && gemm::gemv_covers(type, T)) {
    const gemm::GemvWeight gw{w, type, N, weight.row_bytes, out, N};
    gemm::run_q8_gemv(T, K, thread_rows().view(x, T, K), &gw, 1, accumulate);
    epilogue.apply_all(out, T);
    return;
  }
  if (precision == gemm::Precision::int8) {
    const CodesTransposed b(weight);
    gemm::run_q8(T, N, K, thread_rows().view(x, T, K), b, out, N, accumulate, epilogue.update());
    return;
  }
  const WeightTransposed b(weight);
  gemm::run(T, N, K, {x, K, 1}, b, {out, N, 1}, 1.0f, accumulate ? 1.0f : 0.0f, precision,
            epilogue.tiles());
}

void matmul_forward_many(const float* x, int64_t T, int64_t K, const ManyWeight* weights,
                         int64_t count, bool accumulate, gemm::Precision precision) {
  bool gemv = precision == gemm::Precision::int8;
  for (int64_t i = 0; i < count; ++i) gemv = gemv && gemm::gemv_covers(weights[i].type, T);
  if (!gemv) {
    for (int64_t i = 0; i < count; ++i)
      matmul_forward(x, T, K, weights[i].w, weights[i].type, weights[i].n, weights[i].out,
                     accumulate, precision);
    return;
  }
  std::vector<gemm::GemvWeight> gw;
  for (int64_t i = 0; i < count; ++i) {
    const GgufMatrix weight(weights[i].w, weights[i].type, K);
    gw.push_back({weights[i].w, weights[i].type, weights[i].n, weight.row_bytes, weights[i].out,
                  weights[i].n});
  }
  gemm::run_q8_gemv(T, K, thread_rows().view(x, T, K), gw.data(), count, accumulate);
}

void matmul_backward(const float* dy, int64_t T, int64_t N, const uint8_t* w, GgmlType type,
                     int64_t K, float* dx, bool accumulate, gemm::Precision precision,
                     const LoraTerm* lora) {
  const GgufMatrix weight(w, type, K);
  const LoraEpilogue epilogue(lora, K);
  if (precision == gemm::Precision::int8) {
    const CodesRows b(weight);
    gemm::run_q8(T, K, N, thread_rows().view(dy, T, N), b, dx, K, accumulate, epilogue.update());
    return;
  }
  const WeightRows b(weight);
  gemm::run(T, K, N, {dy, N, 1}, b, {dx, K, 1}, 1.0f, accumulate ? 1.0f : 0.0f, precision,
            epilogue.tiles());
}

}  // namespace ggtune
