// The weight as the engine's B operand. Forward reads B = W.T (a panel is a few rows of
// W, each dequantized along K); backward reads B = W (a panel is a band of W's columns,
// each row dequantized over the band). Tile boundaries along W's rows fall on quant blocks.
#include "ops/matmul.h"

#include <cstring>
#include <stdexcept>

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
  // dst[0:n] = W[r, c0 : c0 + n]; c0 and n multiples of the block size.
  void dequantize(int64_t r, int64_t c0, int64_t n, float* dst) const {
    dequantize_row(type, data + r * row_bytes + c0 / traits.block_size * traits.type_size, dst, n);
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

}  // namespace

gemm::Precision auto_matmul_precision(GgmlType) { return gemm::Precision::f32; }

void matmul_forward(const float* x, int64_t T, int64_t K, const uint8_t* w, GgmlType type,
                    int64_t N, float* out, bool accumulate, gemm::Precision precision) {
  const GgufMatrix weight(w, type, K);
  const WeightTransposed b(weight);
  gemm::run(T, N, K, {x, K, 1}, b, {out, N, 1}, 1.0f, accumulate ? 1.0f : 0.0f, precision);
}

void matmul_backward(const float* dy, int64_t T, int64_t N, const uint8_t* w, GgmlType type,
                     int64_t K, float* dx, bool accumulate, gemm::Precision precision) {
  const GgufMatrix weight(w, type, K);
  const WeightRows b(weight);
  gemm::run(T, K, N, {dy, N, 1}, b, {dx, K, 1}, 1.0f, accumulate ? 1.0f : 0.0f, precision);
}

}  // namespace ggtune
