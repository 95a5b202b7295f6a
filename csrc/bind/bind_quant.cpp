// GGUF weight formats: type facts, row dequantization and the embedding row gather.
//
// Shapes: R rows of a GGUF tensor, B bytes per row (row_bytes), C columns (elements per row),
// T gathered tokens.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>

#include "bind/arrays.h"
#include "ops/convert.h"
#include "parallel.h"
#include "quant/activations.h"
#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant/types.h"

namespace ggtune::bind {
namespace {

const TypeTraits& traits_of(int ggml_type) {
  const TypeTraits* t = type_traits(ggml_type);
  if (!t) fail("ggml_type", "unsupported GGML type " + std::to_string(ggml_type));
  return *t;
}

// Checks that `out` has C columns fitting `t`, and `data` rows of exactly the bytes they take.
// Returns C.
int64_t check_row_layout(const py::array& data, const py::array& out, const TypeTraits& t) {
  const int64_t cols = dim(out, 1);
  if (cols % t.block_size != 0)
    fail("out", "expected a column count that is a multiple of " + std::string(t.name) +
                    "'s block size " + std::to_string(t.block_size) + ", got " +
                    std::to_string(cols));
  const int64_t want = row_bytes(t, cols);
  if (dim(data, 1) != want)
    fail("data", "expected rows of " + std::to_string(want) + " bytes (" + std::to_string(cols) +
                     " " + t.name + " elements), got " + std::to_string(dim(data, 1)));
  return cols;
}

// Rows per thread chunk: at least ~16K elements, so small tensors stay on one thread.
int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(cols, 1));
}

// out[r] = dequantize(data[r]) for every row r.
void dequantize(const py::array& data, int ggml_type, py::array& out) {
  const TypeTraits& t = traits_of(ggml_type);
  const uint8_t* src = cdata_of<uint8_t>(data, "data", {kAny, kAny});  // [R, B]
  float* dst = data_of<float>(out, "out", {dim(data, 0), kAny}, true);  // [R, C]
  const int64_t cols = check_row_layout(data, out, t);
  const int64_t rows = dim(data, 0), stride = dim(data, 1);
  const GgmlType type = static_cast<GgmlType>(ggml_type);
  py::gil_scoped_release release;
  parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      dequantize_row(type, src + r * stride, dst + r * cols, cols);
  });
}

// out[i] = dequantize(data[ids[i]]): the embedding lookup on a quantized table.
void get_rows(const py::array& data, int ggml_type, const py::array& ids, py::array& out) {
  const TypeTraits& t = traits_of(ggml_type);
  const uint8_t* src = cdata_of<uint8_t>(data, "data", {kAny, kAny});  // [R, B]
  const int32_t* idx = cdata_of<int32_t>(ids, "ids", {kAny});          // [T]
  float* dst = data_of<float>(out, "out", {dim(ids, 0), kAny}, true);  // [T, C]
  const int64_t cols = check_row_layout(data, out, t);
  const int64_t n_rows = dim(data, 0), n_ids = dim(ids, 0), stride = dim(data, 1);
  for (int64_t i = 0; i < n_ids; ++i) {
    if (idx[i] < 0 || idx[i] >= n_rows)
      throw py::index_error("ids: ids[" + std::to_string(i) + "] = " + std::to_string(idx[i]) +
                            " is outside the table's " + std::to_string(n_rows) + " rows");
  }
  const GgmlType type = static_cast<GgmlType>(ggml_type);
  py::gil_scoped_release release;
  parallel_for(n_ids, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      dequantize_row(type, src + idx[i] * stride, dst + i * cols, cols);
  });
}

// out = the F16 or BF16 bits of x, rounded to nearest even (the helpers kernels use to pack
// 16-bit operands).
void float_to_half(const py::array& x, int ggml_type, py::array& out) {
  const TypeTraits& t = traits_of(ggml_type);
  const auto type = static_cast<GgmlType>(ggml_type);
  if (type != GgmlType::F16 && type != GgmlType::BF16)
    fail("ggml_type", std::string("expected F16 (1) or BF16 (30), got ") + t.name);
  const float* src = cdata_of<float>(x, "x", {kAny});                     // [n]
  uint16_t* dst = data_of<uint16_t>(out, "out", {dim(x, 0)}, true);       // [n]
  const int64_t n = dim(x, 0);
  py::gil_scoped_release release;
  if (type == GgmlType::F16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
  } else {
    ops::f32_to_bf16(src, dst, n);
  }
}

// out = the BF16 bits of x: the compact form of a training layer's kept activations.
void to_bf16(const py::array& x, py::array& out) {
  const float* src = cdata_of<float>(x, "x", {kAny});                // [n]
  uint16_t* dst = data_of<uint16_t>(out, "out", {dim(x, 0)}, true);  // [n]
  const int64_t n = dim(x, 0);
  py::gil_scoped_release release;
  ops::f32_to_bf16(src, dst, n);
}

// out = the float32 values of BF16 bits x (exact): GGUF's BF16 rows, dequantized in chunks.
void from_bf16(const py::array& x, py::array& out) {
  const uint16_t* src = cdata_of<uint16_t>(x, "x", {kAny});       // [n]
  float* dst = data_of<float>(out, "out", {dim(x, 0)}, true);     // [n]
  const int64_t n = dim(x, 0);
  py::gil_scoped_release release;
  parallel_for(n, int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    dequantize_row(GgmlType::BF16, src + begin, dst + begin, end - begin);
  });
}

// out [T, K] = x as ggml's CPU dot products see it next to a `weight_type` weight.
void round_activations(const py::array& x, int weight_type, py::array& out) {
  const TypeTraits& t = traits_of(weight_type);
  const float* src = cdata_of<float>(x, "x", {kAny, kAny});                         // [T, K]
  float* dst = data_of<float>(out, "out", {dim(x, 0), dim(x, 1)}, true);            // [T, K]
  const auto type = static_cast<GgmlType>(weight_type);
  const int64_t block = activation_block(type), rows = dim(x, 0), cols = dim(x, 1);
  if (cols % block != 0)
    fail("x", "expected a row length that is a multiple of " + std::to_string(block) + " for " + t.name +
                  " weights, got " + std::to_string(cols));
  py::gil_scoped_release release;
  parallel_for(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) round_activations_like_ggml(type, src + r * cols, dst + r * cols, cols);
  });
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def(
      "type_info",
      [](int ggml_type) {
        const TypeTraits& t = traits_of(ggml_type);
        return py::make_tuple(t.name, t.block_size, t.type_size);
      },
      py::arg("ggml_type"),
      "(name, block_size, type_size) of a GGML type id: elements and bytes per block.");
  m.def("dequantize", &dequantize, py::arg("data"), py::arg("ggml_type"), py::arg("out"),
        "out float32 [R, C] = rows of data uint8 [R, row_bytes] decoded from ggml_type, "
        "bit-exact with gguf.quants.dequantize.");
  m.def("round_activations", &round_activations, py::arg("x"), py::arg("weight_type"), py::arg("out"),
        "out float32 [T, K] = x rounded as ggml's CPU backend rounds activations before a dot product "
        "with a weight of weight_type (Q8_0 / Q8_1 / Q8_K blocks, F16, BF16); out may alias x.");
  m.def("get_rows", &get_rows, py::arg("data"), py::arg("ggml_type"), py::arg("ids"),
        py::arg("out"),
        "out float32 [T, C] = dequantized rows ids int32 [T] of data uint8 [R, row_bytes] "
        "(embedding lookup).");
  m.def("float_to_half", &float_to_half, py::arg("x"), py::arg("ggml_type"), py::arg("out"),
        "out uint16 [n] = bits of float32 x [n] as F16 or BF16 (ggml_type 1 or 30), rounded "
        "to nearest even.");
  m.def("to_bf16", &to_bf16, py::arg("x"), py::arg("out"),
        "out uint16 [n] = bfloat16 bits of float32 x [n], rounded to nearest even (NaN stays NaN, "
        "denormals kept), threaded.");
  m.def("from_bf16", &from_bf16, py::arg("x"), py::arg("out"),
        "out float32 [n] = the exact values of bfloat16 bits x uint16 [n], threaded.");
}

}  // namespace ggtune::bind
