// Matmul bindings: the quantized-weight matmul in both directions and plain float32 GEMM.
//
// Shapes: T tokens, K in-features, N out-features, B bytes per weight row.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench/peaks.h"
#include "bind/arrays.h"
#include "gemm/gemm.h"
#include "ops/matmul.h"
#include "dispatch.h"
#include "parallel.h"
#include "quant/types.h"

namespace ggtune::bind {
namespace {

const TypeTraits& weight_traits(int w_type) {
  const TypeTraits* t = type_traits(w_type);
  if (!t) fail("w_type", "unsupported GGML type " + std::to_string(w_type));
  return *t;
}

gemm::Precision parse_precision(const std::string& precision, GgmlType type) {
  if (precision == "auto") return auto_matmul_precision(type);
  if (precision == "f32") return gemm::Precision::f32;
  if (precision == "bf16") return gemm::Precision::bf16;
  if (precision == "int8") return gemm::Precision::int8;
  fail("precision", "expected 'auto', 'f32', 'bf16' or 'int8', got '" + precision + "'");
}

// Checks w: N rows holding K elements of type t each. Returns N.
int64_t check_weight(const py::array& w, const TypeTraits& t, int64_t K, const char* k_owner) {
  cdata_of<uint8_t>(w, "w", {kAny, kAny});
  if (K % t.block_size != 0)
    fail(k_owner, "expected K (axis 1) to be a multiple of " + std::string(t.name) +
                      "'s block size " + std::to_string(t.block_size) + ", got " +
                      std::to_string(K));
  if (dim(w, 1) != row_bytes(t, K))
    fail("w", "expected rows of " + std::to_string(row_bytes(t, K)) + " bytes (K = " +
                  std::to_string(K) + " " + t.name + " elements), got " +
                  std::to_string(dim(w, 1)));
  return dim(w, 0);
}

// True when the byte ranges of a and b overlap.
bool overlaps(const py::array& a, const py::array& b) {
  const auto* pa = static_cast<const char*>(a.data());
  const auto* pb = static_cast<const char*>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// The optional lora=(z, b, scale) of matmul and matmul_backward, checked against the output
// out[T, n]: z float32 [T, r], b float32 [r, n]. The arrays stay referenced by the caller's tuple.
struct LoraArg {
  py::array z, b;
  LoraTerm term{};
  const LoraTerm* get() const { return term.z ? &term : nullptr; }
};

LoraArg lora_arg(const py::object& lora, const py::array& out, int64_t T, int64_t n) {
  LoraArg arg;
  if (lora.is_none()) return arg;
  if (!py::isinstance<py::tuple>(lora) || py::len(lora) != 3)
    fail("lora", "expected a tuple (z, b, scale) or None");
  const auto parts = py::reinterpret_borrow<py::tuple>(lora);
  float scale = 0.0f;
  try {
    arg.z = py::cast<py::array>(parts[0]);
    arg.b = py::cast<py::array>(parts[1]);
    scale = py::cast<float>(parts[2]);
  } catch (const py::cast_error&) {
    fail("lora", "expected (z, b, scale): two float32 arrays and a float");
  }
  const float* z = cdata_of<float>(arg.z, "lora z", {T, kAny});  // [T, r]
  const int64_t r = dim(arg.z, 1);
  const float* b = cdata_of<float>(arg.b, "lora b", {r, n});  // [r, n]
  if (overlaps(arg.z, out) || overlaps(arg.b, out)) fail("lora", "z or b overlaps the output");
  arg.term = {z, b, r, scale};
  return arg;
}

// out[T, N] (= or +=) x[T, K] @ W.T (+ scale * z @ b)
void matmul(const py::array& x, const py::array& w, int w_type, py::array& out, bool accumulate,
            const std::string& precision, const py::object& lora) {
  const TypeTraits& t = weight_traits(w_type);
  const float* xp = cdata_of<float>(x, "x", {kAny, kAny});  // [T, K]
  const int64_t T = dim(x, 0), K = dim(x, 1);
  const int64_t N = check_weight(w, t, K, "x");
  float* op = data_of<float>(out, "out", {T, N}, true);  // [T, N]
  const auto type = static_cast<GgmlType>(w_type);
  const gemm::Precision prec = parse_precision(precision, type);
  const auto* wp = static_cast<const uint8_t*>(w.data());  // [N, B]
  const LoraArg term = lora_arg(lora, out, T, N);
  py::gil_scoped_release release;
  matmul_forward(xp, T, K, wp, type, N, op, accumulate, prec, term.get());
}

// outs[i][T, N_i] (= or +=) x[T, K] @ W_i.T for weights sharing x.
void matmul_many(const py::array& x, const py::list& ws, const py::list& w_types,
                 const py::list& outs, bool accumulate, const std::string& precision) {
  const float* xp = cdata_of<float>(x, "x", {kAny, kAny});  // [T, K]
  const int64_t T = dim(x, 0), K = dim(x, 1);
  const size_t count = ws.size();
  if (w_types.size() != count || outs.size() != count)
    fail("ws", "expected as many weights, w_types and outs, got " + std::to_string(count) + ", " +
                   std::to_string(w_types.size()) + " and " + std::to_string(outs.size()));
  std::vector<py::array> w_arrays, out_arrays;
  std::vector<ManyWeight> many;
  std::vector<gemm::Precision> precs;
  for (size_t i = 0; i < count; ++i) {
    w_arrays.push_back(py::cast<py::array>(ws[i]));
    out_arrays.push_back(py::cast<py::array>(outs[i]));
    const int w_type = py::cast<int>(w_types[i]);
    const TypeTraits& t = weight_traits(w_type);
    const int64_t N = check_weight(w_arrays[i], t, K, "x");
    float* op = data_of<float>(out_arrays[i], "outs", {T, N}, true);  // [T, N_i]
    if (overlaps(out_arrays[i], x)) fail("outs", "an output overlaps x");
    for (size_t j = 0; j < i; ++j)
      if (overlaps(out_arrays[i], out_arrays[j])) fail("outs", "two outputs overlap");
    const auto type = static_cast<GgmlType>(w_type);
    precs.push_back(parse_precision(precision, type));
    many.push_back({static_cast<const uint8_t*>(w_arrays[i].data()), type, N, op});
  }
  py::gil_scoped_release release;
  const bool uniform = std::all_of(precs.begin(), precs.end(), [&](auto p) { return p == precs[0]; });
  if (uniform && count > 0) {
    matmul_forward_many(xp, T, K, many.data(), int64_t(count), accumulate, precs[0]);
    return;
  }
  for (size_t i = 0; i < count; ++i)
    matmul_forward(xp, T, K, many[i].w, many[i].type, many[i].n, many[i].out, accumulate, precs[i]);
}

// dx[T, K] (= or +=) dy[T, N] @ W (+ scale * z @ b)
void matmul_backward(const py::array& dy, const py::array& w, int w_type, py::array& dx,
                     bool accumulate, const std::string& precision, const py::object& lora) {
  const TypeTraits& t = weight_traits(w_type);
  const float* dyp = cdata_of<float>(dy, "dy", {kAny, kAny});  // [T, N]
  const int64_t T = dim(dy, 0);
  float* dxp = data_of<float>(dx, "dx", {T, kAny}, true);  // [T, K]
  const int64_t K = dim(dx, 1);
  const int64_t N = check_weight(w, t, K, "dx");
  if (dim(dy, 1) != N)
    fail("dy", "expected shape (" + std::to_string(T) + ", " + std::to_string(N) +
                   ") to match w's " + std::to_string(N) + " rows, got " + shape_str(dy));
  const auto type = static_cast<GgmlType>(w_type);
  const gemm::Precision prec = parse_precision(precision, type);
  const auto* wp = static_cast<const uint8_t*>(w.data());  // [N, B]
  const LoraArg term = lora_arg(lora, dx, T, K);
  py::gil_scoped_release release;
  ggtune::matmul_backward(dyp, T, N, wp, type, K, dxp, accumulate, prec, term.get());
}

// out[M, N] = alpha * op(a)[M, K] @ op(b)[K, N] + beta * out
void gemm(const py::array& a, const py::array& b, py::array& out, bool trans_a, bool trans_b,
          float alpha, float beta) {
  const float* ap = cdata_of<float>(a, "a", {kAny, kAny});  // [M, K] or [K, M]
  const float* bp = cdata_of<float>(b, "b", {kAny, kAny});  // [K, N] or [N, K]
  const int64_t M = dim(a, trans_a ? 1 : 0), K = dim(a, trans_a ? 0 : 1);
  const int64_t N = dim(b, trans_b ? 0 : 1);
  if (dim(b, trans_b ? 1 : 0) != K)
    fail("b", "expected " + std::to_string(K) + " (op(a)'s K) along axis " +
                  std::to_string(trans_b ? 1 : 0) + ", got shape " + shape_str(b));
  float* op = data_of<float>(out, "out", {M, N}, true);  // [M, N]
  const int64_t lda = dim(a, 1), ldb = dim(b, 1);
  py::gil_scoped_release release;
  gemm::gemm_f32(M, N, K, ap, lda, trans_a, bp, ldb, trans_b, op, N, alpha, beta);
}

// Ops per second of the machine's own peak loop (bench/peaks.h).
double peak_rate(const std::string& kind, int threads, double seconds, bool cpu_time) {
  static const std::pair<const char*, bench::PeakKind> kinds[] = {
      {"int8", bench::PeakKind::int8},
      {"bf16", bench::PeakKind::bf16},
      {"f32", bench::PeakKind::f32},
      {"int8_affine", bench::PeakKind::int8_affine},
      {"int8_symmetric", bench::PeakKind::int8_symmetric},
      {"int8_column_scaled", bench::PeakKind::int8_column_scaled}};
  const auto* found = std::find_if(std::begin(kinds), std::end(kinds),
                                   [&](const auto& entry) { return kind == entry.first; });
  if (found == std::end(kinds))
    fail("kind", "expected 'int8', 'bf16', 'f32', 'int8_affine', 'int8_symmetric' or "
                 "'int8_column_scaled', got '" + kind + "'");
  const bench::PeakKind k = found->second;
  if (!(seconds > 0 && seconds <= 60)) fail("seconds", "expected a duration in (0, 60]");
  if (threads <= 0) threads = num_threads();
  if (cpu_time && threads != 1) fail("cpu_time", "only with threads=1 (one thread's CPU time)");
  if (bench::peak_loop(k, 1) == 0)
    fail("kind", "the " + std::string(isa_name(active_isa())) + " tier has no '" + kind +
                     "' instruction the kernels use");
  py::gil_scoped_release release;
  return bench::peak_rate(k, threads, seconds, cpu_time);
}

}  // namespace

void bind_matmul(py::module_& m) {
  using namespace pybind11::literals;
  m.def("matmul", &matmul, "x"_a, "w"_a, "w_type"_a, "out"_a, "accumulate"_a = false,
        "precision"_a = "auto", "lora"_a = py::none(),
        "out[T, N] (= or +=) x[T, K] @ W.T, W the GGUF bytes (uint8 [N, row_bytes]) of ggml "
        "type w_type, dequantized tile by tile. precision: 'f32', 'bf16' (operands rounded to "
        "bfloat16, float32 accumulation; vdpbf16ps on the avx512 tier, emulated elsewhere), "
        "'int8' (x rounded to Q8 per 32 values, W as its integer codes or requantized to 8 bits "
        "per 32, integer dot products, the offsets of Q4_1/Q5_1/Q4_K/Q5_K summed as int16 codes: "
        "csrc/gemm/qgemm.h) or 'auto' (int8 for quantized W on "
        "the avx512 tier, else f32: see auto_matmul_precision in csrc/ops/matmul.h). "
        "lora=(z, b, scale) (z float32 [T, r], b float32 [r, N]) also adds scale * z @ b, the "
        "LoRA up-projection, to each output tile as it is computed: the same float ops as "
        "lora_expand(z, b, out, scale) after the product. out must not overlap x, z or b.");
  m.def("matmul_many", &matmul_many, "x"_a, "ws"_a, "w_types"_a, "outs"_a, "accumulate"_a = false,
        "precision"_a = "auto",
        "outs[i][T, N_i] (= or +=) x[T, K] @ W_i.T for weights that share x (q/k/v, gate/up): "
        "the same products as one matmul per weight. On the int8 path with T <= 4 (decoding) "
        "all of them run in one parallel region, W's blocks read in place "
        "(csrc/gemm/qgemv.h); else one matmul each. Outputs must not overlap x or each other.");
  m.def("matmul_backward", &matmul_backward, "dy"_a, "w"_a, "w_type"_a, "dx"_a,
        "accumulate"_a = false, "precision"_a = "auto", "lora"_a = py::none(),
        "dx[T, K] (= or +=) dy[T, N] @ W: the input gradient of matmul; same W and precision "
        "(int8: dy rounded to Q8 per 32 values along N, W requantized to 8 bits with one scale "
        "per column and K panel of up to 1024 rows). "
        "lora=(z, b, scale) (b [r, K]) adds scale * z @ b to dx as in matmul (the adapters' "
        "dz·A). dx must not overlap dy, z or b.");
  m.def("gemm", &gemm, "a"_a, "b"_a, "out"_a, "trans_a"_a = false, "trans_b"_a = false,
        "alpha"_a = 1.0f, "beta"_a = 0.0f,
        "Plain float32 out[M, N] = alpha * op(a) @ op(b) + beta * out, op = transpose when "
        "trans_* (beta = 0: out is only written). out must not overlap a or b.");
  m.def("peak_rate", &peak_rate, "kind"_a, "threads"_a = 0, "seconds"_a = 0.5, "cpu_time"_a = false,
        "Operations per second (a multiply-add counts 2) of `threads` threads (0: num_threads()) "
        "running a register-only loop of the widest instruction the active tier has for `kind`: "
        "'int8' vpdpbusd zmm, 'bf16' vdpbf16ps zmm (avx512 only), 'f32' FMA (zmm, ymm or "
        "scalar); or the int8 engine's ceilings (avx512 only), its micro-kernel on one tile of "
        "K = 576 with every operand in L1: 'int8_affine' (Q4_1/Q5_1/Q4_K/Q5_K forward), "
        "'int8_symmetric' (other forward) and 'int8_column_scaled' (backward). Best of 5 rounds lasting about seconds / 5 each. cpu_time (threads=1 only): per second "
        "of the thread's CPU time, so time slices of other processes do not count.");
}

}  // namespace ggtune::bind
