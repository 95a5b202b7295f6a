// Bindings of the model ops (csrc/ops/): rms_norm, rope, attention, swiglu, geglu, bias,
// cross-entropy, embedding backward, element-wise add. Every shape relation is checked here, before the
// GIL is released and a kernel runs on raw pointers.
#include <cmath>
#include <string>
#include <utility>

#include "bind/arrays.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/loss.h"
#include "ops/lora.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace ggtune::bind {
namespace {

using ops::AttentionShape;

// Integer ids must index a table of `limit` rows; `allow_negative` lets < 0 mark "ignored".
void check_ids(const int32_t* ids, int64_t n, int64_t limit, const char* name,
               bool allow_negative) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] >= limit || (!allow_negative && ids[i] < 0))
      throw py::index_error(std::string(name) + ": entry " + std::to_string(i) + " is " +
                            std::to_string(ids[i]) + ", expected " +
                            (allow_negative ? "< " : "in [0, ") + std::to_string(limit) +
                            (allow_negative ? " (or < 0 to ignore)" : ")"));
  }
}

// An element-wise operand: of dtype T (float32 unless said), C-contiguous, the same shape as
// `ref` (any rank).
template <class T = float>
T* elementwise_data(py::array& a, const char* name, const py::array& ref, bool writable) {
  if (!a.dtype().is(py::dtype::of<T>()))
    fail(name, "expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                   std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    fail(name, "expected a C-contiguous array (use numpy.ascontiguousarray)");
  if (writable && !a.writeable()) fail(name, "expected a writable array");
  bool same = a.ndim() == ref.ndim();
  for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == ref.shape(i);
  if (!same) fail(name, "expected shape " + shape_str(ref) + ", got " + shape_str(a));
  return static_cast<T*>(const_cast<void*>(a.data()));  // written only when `writable`
}

// An operand read as float32 or as uint16 (bfloat16 bits, a training layer's compact kept
// array): is_bf16 tells which, float_or_bf16 checks it as that dtype with these dims.
bool is_bf16(const py::array& x) { return x.dtype().is(py::dtype::of<uint16_t>()); }

const void* float_or_bf16(const py::array& x, const char* name, bool bf16,
                          std::initializer_list<int64_t> dims) {
  return bf16 ? static_cast<const void*>(cdata_of<uint16_t>(x, name, dims))
              : static_cast<const void*>(cdata_of<float>(x, name, dims));
}

void rms_norm_forward(const py::array& x, const py::array& weight, float eps, py::array& out,
                      py::array& rstd) {
  const bool bf16 = is_bf16(x);
  const void* px = float_or_bf16(x, "x", bf16, {kAny, kAny});
  const int64_t T = dim(x, 0), C = dim(x, 1);
  const float* pw = cdata_of<float>(weight, "weight", {C});
  float* po = data_of<float>(out, "out", {T, C}, true);
  float* pr = data_of<float>(rstd, "rstd", {T}, true);
  if (!(eps >= 0.0f)) fail("eps", "expected >= 0");
  py::gil_scoped_release nogil;
  const auto& k = ops::norm_kernels();
  if (bf16) k.rms_norm_forward_bf16(static_cast<const uint16_t*>(px), pw, eps, po, pr, T, C);
  else k.rms_norm_forward(static_cast<const float*>(px), pw, eps, po, pr, T, C);
}

void rms_norm_backward(const py::array& dout, const py::array& x, const py::array& weight,
                       const py::array& rstd, py::array& dx, py::object dweight,
                       py::object residual) {
  const bool bf16 = is_bf16(x);
  const void* px = float_or_bf16(x, "x", bf16, {kAny, kAny});
  const int64_t T = dim(x, 0), C = dim(x, 1);
  const float* pg = cdata_of<float>(dout, "dout", {T, C});
  const float* pw = cdata_of<float>(weight, "weight", {C});
  const float* pr = cdata_of<float>(rstd, "rstd", {T});
  float* pdx = data_of<float>(dx, "dx", {T, C}, true);
  float* pdw = nullptr;
  py::array dw_array, residual_array;
  if (!dweight.is_none()) {
    if (!py::isinstance<py::array>(dweight)) fail("dweight", "expected a numpy array or None");
    dw_array = dweight.cast<py::array>();
    pdw = data_of<float>(dw_array, "dweight", {C}, true);
  }
  const float* pres = nullptr;
  if (!residual.is_none()) {
    if (!py::isinstance<py::array>(residual)) fail("residual", "expected a numpy array or None");
    residual_array = residual.cast<py::array>();
    pres = cdata_of<float>(residual_array, "residual", {T, C});
  }
  py::gil_scoped_release nogil;
  const auto& k = ops::norm_kernels();
  if (bf16) k.rms_norm_backward_bf16(pg, static_cast<const uint16_t*>(px), pw, pr, pres, pdx, pdw, T, C);
  else k.rms_norm_backward(pg, static_cast<const float*>(px), pw, pr, pres, pdx, pdw, T, C);
}

// The YaRN and frequency-factor arguments of rope_forward/rope_backward (ggml_rope_ext's).
struct RopeExtension {
  py::object freq_factors;
  float ext_factor, attn_factor, beta_fast, beta_slow;
  int64_t n_ctx_orig;
};

ops::RopeParams rope_params(int64_t n_dims, float freq_base, float freq_scale, int mode,
                            const RopeExtension& ext, int64_t D) {
  if (n_dims <= 0 || n_dims % 2 != 0 || n_dims > D)
    fail("n_dims", "expected an even number in [2, head dim " + std::to_string(D) + "], got " +
                       std::to_string(n_dims));
  if (mode != ops::kRopeNormal && mode != ops::kRopeNeox)
    fail("mode", "expected 0 (normal) or 2 (neox), got " + std::to_string(mode));
  if (!(freq_base > 0.0f)) fail("freq_base", "expected > 0");
  if (!std::isfinite(ext.ext_factor)) fail("ext_factor", "expected a finite number");
  if (!std::isfinite(ext.attn_factor)) fail("attn_factor", "expected a finite number");
  if (ext.ext_factor != 0.0f) {  // YaRN's ramp and magnitude need these to be meaningful
    if (!(freq_scale > 0.0f)) fail("freq_scale", "expected > 0 with YaRN (ext_factor != 0)");
    if (ext.n_ctx_orig <= 0) fail("n_ctx_orig", "expected > 0 with YaRN (ext_factor != 0)");
    if (!(ext.beta_fast > 0.0f)) fail("beta_fast", "expected > 0");
    if (!(ext.beta_slow > 0.0f)) fail("beta_slow", "expected > 0");
  }
  ops::RopeParams p{n_dims, freq_base, freq_scale, mode};
  if (!ext.freq_factors.is_none()) {
    if (!py::isinstance<py::array>(ext.freq_factors))
      fail("freq_factors", "expected a numpy array or None");
    const auto factors = ext.freq_factors.cast<py::array>();
    p.freq_factors = cdata_of<float>(factors, "freq_factors", {n_dims / 2});
    for (int64_t i = 0; i < n_dims / 2; ++i)
      if (!(std::isfinite(p.freq_factors[i]) && p.freq_factors[i] > 0.0f))
        fail("freq_factors", "entry " + std::to_string(i) + " is " +
                                 std::to_string(p.freq_factors[i]) + ", expected a finite number > 0");
  }
  p.ext_factor = ext.ext_factor;
  p.attn_factor = ext.attn_factor;
  p.beta_fast = ext.beta_fast;
  p.beta_slow = ext.beta_slow;
  p.n_ctx_orig = ext.n_ctx_orig;
  return p;
}

// Forward and backward share the checks; `backward` selects the rotation direction.
void rope_apply(const py::array& x, const py::array& pos, int64_t n_dims, float freq_base,
                float freq_scale, int mode, py::array& out, const RopeExtension& ext,
                bool backward, const char* x_name, const char* out_name) {
  const float* px = cdata_of<float>(x, x_name, {kAny, kAny, kAny});
  const int64_t T = dim(x, 0), H = dim(x, 1), D = dim(x, 2);
  const int32_t* pp = cdata_of<int32_t>(pos, "pos", {T});
  float* po = data_of<float>(out, out_name, {T, H, D}, true);
  const ops::RopeParams p = rope_params(n_dims, freq_base, freq_scale, mode, ext, D);
  py::gil_scoped_release nogil;  // ext (and so freq_factors' array) outlives the call
  if (backward) ops::rope_backward(px, pp, p, po, T, H, D);
  else ops::rope_forward(px, pp, p, po, T, H, D);
}

// rope_forward(x, pos, n_dims, freq_base, freq_scale, mode, out, freq_factors=None,
// ext_factor=0.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0, n_ctx_orig=0), and
// rope_backward with (dout, ..., dx, ...) in place of (x, ..., out, ...).
void def_rope(py::module_& m, const char* name, const char* x_name, const char* out_name,
              bool backward, const char* doc) {
  using py::arg;
  m.def(
      name,
      [=](const py::array& x, const py::array& pos, int64_t n_dims, float freq_base,
          float freq_scale, int mode, py::array& out, py::object freq_factors, float ext_factor,
          float attn_factor, float beta_fast, float beta_slow, int64_t n_ctx_orig) {
        const RopeExtension ext{std::move(freq_factors), ext_factor, attn_factor,
                                beta_fast,               beta_slow,  n_ctx_orig};
        rope_apply(x, pos, n_dims, freq_base, freq_scale, mode, out, ext, backward, x_name,
                   out_name);
      },
      arg(x_name), arg("pos"), arg("n_dims"), arg("freq_base"), arg("freq_scale"), arg("mode"),
      arg(out_name), arg("freq_factors") = py::none(), arg("ext_factor") = 0.0f,
      arg("attn_factor") = 1.0f, arg("beta_fast") = 32.0f, arg("beta_slow") = 1.0f,
      arg("n_ctx_orig") = 0, doc);
}

AttentionShape attention_shape(const py::array& q, const py::array& k, const py::array& v) {
  cdata_of<float>(q, "q", {kAny, kAny, kAny, kAny});
  const int64_t B = dim(q, 0), S = dim(q, 1), Hq = dim(q, 2), D = dim(q, 3);
  cdata_of<float>(k, "k", {B, kAny, kAny, D});
  const int64_t Skv = dim(k, 1), Hkv = dim(k, 2);
  cdata_of<float>(v, "v", {B, Skv, Hkv, D});
  if (Skv < S)
    fail("k", "expected at least as many positions as q (" + std::to_string(S) + "), got " +
                  std::to_string(Skv));
  if (Hkv == 0 || Hq % Hkv != 0)
    fail("k", "expected a head count dividing q's " + std::to_string(Hq) + ", got " +
                  std::to_string(Hkv));
  return {B, S, Skv, Hq, Hkv, D};
}

// first_key: None or int32 [B, S] with 0 <= first_key[b,i] <= i + (Skv - S) (the query's own
// position), so every query sees at least itself and the kernel never reads outside k/v.
const int32_t* first_key_of(const py::object& first_key, const AttentionShape& s) {
  if (first_key.is_none()) return nullptr;
  if (!py::isinstance<py::array>(first_key)) fail("first_key", "expected a numpy array or None");
  const auto bounds = first_key.cast<py::array>();
  const int32_t* p = cdata_of<int32_t>(bounds, "first_key", {s.B, s.S});
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t i = 0; i < s.S; ++i) {
      const int64_t lo = p[b * s.S + i], own = i + s.Skv - s.S;
      if (lo < 0 || lo > own)
        fail("first_key", "entry [" + std::to_string(b) + ", " + std::to_string(i) + "] is " +
                              std::to_string(lo) + ", expected in [0, " + std::to_string(own) +
                              "] (the query's own key position)");
    }
  return p;  // points into the caller's array, which outlives the kernel call
}

ops::AttentionTiles attention_tiles_of(const std::string& tiles) {
  if (tiles == "f32") return ops::AttentionTiles::f32;
  if (tiles == "bf16") return ops::AttentionTiles::bf16;
  fail("tiles", "expected 'f32' or 'bf16', got '" + tiles + "'");
}

void attention_forward(const py::array& q, const py::array& k, const py::array& v, float scale,
                       py::array& out, py::array& lse, const py::object& first_key,
                       const std::string& tiles, const py::object& out_bf16) {
  const AttentionShape s = attention_shape(q, k, v);
  float* po = data_of<float>(out, "out", {s.B, s.S, s.Hq, s.D}, true);
  uint16_t* pob = nullptr;
  if (!out_bf16.is_none()) {
    if (!py::isinstance<py::array>(out_bf16)) fail("out_bf16", "expected a numpy array or None");
    auto array = out_bf16.cast<py::array>();  // the caller's array outlives the call
    pob = data_of<uint16_t>(array, "out_bf16", {s.B, s.S, s.Hq, s.D}, true);
  }
  float* pl = data_of<float>(lse, "lse", {s.B, s.Hq, s.S}, true);
  const int32_t* pf = first_key_of(first_key, s);
  const ops::AttentionTiles t = attention_tiles_of(tiles);
  const auto *pq = static_cast<const float*>(q.data()), *pk = static_cast<const float*>(k.data()),
             *pv = static_cast<const float*>(v.data());
  py::gil_scoped_release nogil;
  ops::attention_kernels().forward(pq, pk, pv, scale, po, pob, pl, pf, t, s);
}

void attention_backward(const py::array& dout, const py::array& q, const py::array& k,
                        const py::array& v, const py::array& out, const py::array& lse,
                        float scale, py::array& dq, py::array& dk, py::array& dv,
                        const py::object& first_key, const std::string& tiles) {
  const AttentionShape s = attention_shape(q, k, v);
  const float* pg = cdata_of<float>(dout, "dout", {s.B, s.S, s.Hq, s.D});
  const bool out_is_bf16 = is_bf16(out);  // a compact kept copy
  const void* pout = float_or_bf16(out, "out", out_is_bf16, {s.B, s.S, s.Hq, s.D});
  const float* po = out_is_bf16 ? nullptr : static_cast<const float*>(pout);
  const uint16_t* pob = out_is_bf16 ? static_cast<const uint16_t*>(pout) : nullptr;
  const float* pl = cdata_of<float>(lse, "lse", {s.B, s.Hq, s.S});
  float* pdq = data_of<float>(dq, "dq", {s.B, s.S, s.Hq, s.D}, true);
  float* pdk = data_of<float>(dk, "dk", {s.B, s.Skv, s.Hkv, s.D}, true);
  float* pdv = data_of<float>(dv, "dv", {s.B, s.Skv, s.Hkv, s.D}, true);
  const int32_t* pf = first_key_of(first_key, s);
  const ops::AttentionTiles t = attention_tiles_of(tiles);
  const auto *pq = static_cast<const float*>(q.data()), *pk = static_cast<const float*>(k.data()),
             *pv = static_cast<const float*>(v.data());
  py::gil_scoped_release nogil;
  ops::attention_kernels().backward(pg, pq, pk, pv, po, pob, pl, scale, pdq, pdk, pdv, pf, t, s);
}

using GatedForward = void (*)(const float*, const float*, float*, uint16_t*, uint16_t*, int64_t);
using GatedBackward = void (*)(const float*, const float*, const float*, float*, float*, float*,
                               int64_t);
using GatedBackwardBf16 = void (*)(const float*, const uint16_t*, const uint16_t*, float*, float*,
                                   float*, int64_t);

// An optional [T, F] output of `dtype` T: null for None.
template <class T>
T* optional_output(const py::object& a, const char* name, int64_t rows, int64_t cols) {
  if (a.is_none()) return nullptr;
  if (!py::isinstance<py::array>(a)) fail(name, "expected a numpy array or None");
  auto array = a.cast<py::array>();
  return data_of<T>(array, name, {rows, cols}, true);  // the caller's array outlives the call
}

// The operands of out[T,F] = act(gate) * up, checked.
struct GatedOperands {
  const float *gate, *up;
  float* out;
  int64_t T, F;
};

GatedOperands gated_operands(const py::array& gate, const py::array& up, py::array& out) {
  const float* pg = cdata_of<float>(gate, "gate", {kAny, kAny});
  const int64_t T = dim(gate, 0), F = dim(gate, 1);
  return {pg, cdata_of<float>(up, "up", {T, F}), data_of<float>(out, "out", {T, F}, true), T, F};
}

// out[T,F] = act(gate) * up, and optionally the bf16 bits of gate and up (uint16 [T,F]).
void gated_forward(GatedForward kernel, const py::array& gate, const py::array& up, py::array& out,
                   const py::object& gate_bf16, const py::object& up_bf16) {
  const GatedOperands o = gated_operands(gate, up, out);
  uint16_t* pgb = optional_output<uint16_t>(gate_bf16, "gate_bf16", o.T, o.F);
  uint16_t* pub = optional_output<uint16_t>(up_bf16, "up_bf16", o.T, o.F);
  if (!pgb != !pub) fail(pgb ? "up_bf16" : "gate_bf16", "expected an array when the other copy is given");
  py::gil_scoped_release nogil;
  kernel(o.gate, o.up, o.out, pgb, pub, o.T * o.F);
}

// gate and up both float32, or both uint16 (bfloat16 bits): the kernel for their dtype.
void gated_backward(GatedBackward kernel, GatedBackwardBf16 kernel_bf16, const py::array& dout,
                    const py::array& gate, const py::array& up, py::array& dgate, py::array& dup,
                    const py::object& act) {
  const bool bf16 = is_bf16(gate);
  const void* pg = float_or_bf16(gate, "gate", bf16, {kAny, kAny});
  const int64_t T = dim(gate, 0), F = dim(gate, 1);
  const void* pu = float_or_bf16(up, "up", bf16, {T, F});
  const float* pd = cdata_of<float>(dout, "dout", {T, F});
  float* pdg = data_of<float>(dgate, "dgate", {T, F}, true);
  float* pdu = data_of<float>(dup, "dup", {T, F}, true);
  float* pa = optional_output<float>(act, "act", T, F);
  py::gil_scoped_release nogil;
  if (bf16)
    kernel_bf16(pd, static_cast<const uint16_t*>(pg), static_cast<const uint16_t*>(pu), pdg, pdu, pa, T * F);
  else
    kernel(pd, static_cast<const float*>(pg), static_cast<const float*>(pu), pdg, pdu, pa, T * F);
}

// <name>_forward(gate, up, out, gate_bf16=None, up_bf16=None) and <name>_backward(dout, gate, up,
// dgate, dup, act=None), calling the active tier's kernel (looked up at each call: the tier can
// change).
void def_gated(py::module_& m, const std::string& name, GatedForward ops::ActivationKernels::*forward,
               GatedBackward ops::ActivationKernels::*backward,
               GatedBackwardBf16 ops::ActivationKernels::*backward_bf16, const char* doc) {
  using py::arg;
  m.def(
      (name + "_forward").c_str(),
      [forward](const py::array& gate, const py::array& up, py::array& out, const py::object& gate_bf16,
                const py::object& up_bf16) {
        gated_forward(ops::activation_kernels().*forward, gate, up, out, gate_bf16, up_bf16);
      },
      arg("gate"), arg("up"), arg("out"), arg("gate_bf16") = py::none(), arg("up_bf16") = py::none(), doc);
  m.def(
      (name + "_backward").c_str(),
      [backward, backward_bf16](const py::array& dout, const py::array& gate, const py::array& up,
                                py::array& dgate, py::array& dup, const py::object& act) {
        const auto& k = ops::activation_kernels();
        gated_backward(k.*backward, k.*backward_bf16, dout, gate, up, dgate, dup, act);
      },
      arg("dout"), arg("gate"), arg("up"), arg("dgate"), arg("dup"), arg("act") = py::none(),
      "dgate, dup [T,F] overwritten; gate and up float32, or both uint16 (bfloat16 bits, a "
      "layer's compact kept arrays); act [T,F], when given, receives the forward's product "
      "act(gate) * up from the same pass (the same bits as the forward from the same inputs).");
}

// y[T,N] += bias[N], in place.
void add_bias(py::array& y, const py::array& bias) {
  float* py_ = data_of<float>(y, "y", {kAny, kAny}, true);
  const int64_t T = dim(y, 0), N = dim(y, 1);
  const float* pb = cdata_of<float>(bias, "bias", {N});
  py::gil_scoped_release nogil;
  ops::activation_kernels().add_bias(py_, pb, T, N);
}

// dbias[N] (= or +=) column sums of dy[T,N].
void bias_backward(const py::array& dy, py::array& dbias, bool accumulate) {
  const float* pd = cdata_of<float>(dy, "dy", {kAny, kAny});
  const int64_t T = dim(dy, 0), N = dim(dy, 1);
  float* pb = data_of<float>(dbias, "dbias", {N}, true);
  py::gil_scoped_release nogil;
  ops::activation_kernels().bias_backward(pd, pb, T, N, accumulate);
}

void cross_entropy_forward(const py::array& logits, const py::array& targets, py::array& loss) {
  const float* pl = cdata_of<float>(logits, "logits", {kAny, kAny});
  const int64_t T = dim(logits, 0), V = dim(logits, 1);
  const int32_t* pt = cdata_of<int32_t>(targets, "targets", {T});
  float* ploss = data_of<float>(loss, "loss", {T}, true);
  check_ids(pt, T, V, "targets", true);
  py::gil_scoped_release nogil;
  ops::loss_kernels().cross_entropy_forward(pl, pt, ploss, T, V);
}

void cross_entropy_backward(const py::array& logits, const py::array& targets, float scale,
                            py::array& dlogits, const py::object& loss) {
  const float* pl = cdata_of<float>(logits, "logits", {kAny, kAny});
  const int64_t T = dim(logits, 0), V = dim(logits, 1);
  const int32_t* pt = cdata_of<int32_t>(targets, "targets", {T});
  float* pd = data_of<float>(dlogits, "dlogits", {T, V}, true);
  float* ploss = nullptr;
  if (!loss.is_none()) {
    if (!py::isinstance<py::array>(loss)) fail("loss", "expected a numpy array or None");
    auto array = loss.cast<py::array>();  // the caller's array outlives the call
    ploss = data_of<float>(array, "loss", {T}, true);
  }
  check_ids(pt, T, V, "targets", true);
  py::gil_scoped_release nogil;
  ops::loss_kernels().cross_entropy_backward(pl, pt, scale, pd, ploss, T, V);
}

void embedding_backward(const py::array& dout, const py::array& ids, py::array& dtable) {
  const float* pg = cdata_of<float>(dout, "dout", {kAny, kAny});
  const int64_t T = dim(dout, 0), C = dim(dout, 1);
  const int32_t* pi = cdata_of<int32_t>(ids, "ids", {T});
  float* pt = data_of<float>(dtable, "dtable", {kAny, C}, true);
  check_ids(pi, T, dim(dtable, 0), "ids", false);
  py::gil_scoped_release nogil;
  ops::embedding_backward(pg, pi, pt, T, C);
}

void add(py::array& a, py::array& b, py::array& out, const py::object& out_bf16) {
  const float* pa = elementwise_data(a, "a", a, false);
  const float* pb = elementwise_data(b, "b", a, false);
  float* po = elementwise_data(out, "out", a, true);
  uint16_t* pob = nullptr;
  if (!out_bf16.is_none()) {
    if (!py::isinstance<py::array>(out_bf16)) fail("out_bf16", "expected a numpy array or None");
    auto copy = out_bf16.cast<py::array>();  // the caller's array outlives the call
    pob = elementwise_data<uint16_t>(copy, "out_bf16", a, true);
  }
  const int64_t n = a.size();
  py::gil_scoped_release nogil;
  ops::activation_kernels().add(pa, pb, po, pob, n);
}

void scale_add(py::array& out, py::array& x, float alpha) {
  float* po = elementwise_data(out, "out", out, true);
  const float* px = elementwise_data(x, "x", out, false);
  const int64_t n = out.size();
  py::gil_scoped_release nogil;
  ops::activation_kernels().scale_add(po, px, alpha, n);
}

// z[T, r] = x[T, K] @ a[r, K]^T
void lora_project(const py::array& x, const py::array& a, py::array& z) {
  const float* px = cdata_of<float>(x, "x", {kAny, kAny});
  const int64_t T = dim(x, 0), K = dim(x, 1);
  const float* pa = cdata_of<float>(a, "a", {kAny, K});
  const int64_t r = dim(a, 0);
  float* pz = data_of<float>(z, "z", {T, r}, true);
  py::gil_scoped_release nogil;
  ops::lora_kernels().project(px, pa, pz, T, K, r);
}

// y[T, K] += scale * z[T, r] @ b[r, K]
void lora_expand(const py::array& z, const py::array& b, py::array& y, float scale) {
  const float* pz = cdata_of<float>(z, "z", {kAny, kAny});
  const int64_t T = dim(z, 0), r = dim(z, 1);
  const float* pb = cdata_of<float>(b, "b", {r, kAny});
  const int64_t K = dim(b, 1);
  float* py_ = data_of<float>(y, "y", {T, K}, true);
  py::gil_scoped_release nogil;
  ops::lora_kernels().expand(pz, pb, scale, py_, T, K, r);
}

// g[r, K] += scale * z[T, r]^T @ x[T, K], x float32 or uint16 (bfloat16 bits)
void lora_outer(const py::array& z, const py::array& x, py::array& g, float scale) {
  const float* pz = cdata_of<float>(z, "z", {kAny, kAny});
  const int64_t T = dim(z, 0), r = dim(z, 1);
  const bool bf16 = is_bf16(x);
  const void* px = float_or_bf16(x, "x", bf16, {T, kAny});
  const int64_t K = dim(x, 1);
  float* pg = data_of<float>(g, "g", {r, K}, true);
  py::gil_scoped_release nogil;
  const auto& kernels = ops::lora_kernels();
  if (bf16) kernels.outer_bf16(pz, static_cast<const uint16_t*>(px), scale, pg, T, K, r);
  else kernels.outer(pz, static_cast<const float*>(px), scale, pg, T, K, r);
}

// dz[:, column:column+r] = scale * dy @ bt^T and db[K, r] += scale * dy^T @ z, one pass over dy
void lora_factor_backward(const py::array& dy, const py::array& z, const py::array& bt, float scale,
                          py::array& dz, int64_t column, py::array& db) {
  const float* pdy = cdata_of<float>(dy, "dy", {kAny, kAny});
  const int64_t T = dim(dy, 0), K = dim(dy, 1);
  const float* pz = cdata_of<float>(z, "z", {T, kAny});
  const int64_t r = dim(z, 1);
  const float* pbt = cdata_of<float>(bt, "bt", {r, K});
  float* pdz = data_of<float>(dz, "dz", {T, kAny}, true);
  const int64_t ldz = dim(dz, 1);
  if (column < 0 || column + r > ldz)
    fail("column", "expected 0 <= column <= " + std::to_string(ldz - r) + " (dz has " + std::to_string(ldz) +
                       " columns, z " + std::to_string(r) + "), got " + std::to_string(column));
  float* pdb = data_of<float>(db, "db", {K, r}, true);
  py::gil_scoped_release nogil;
  ops::lora_kernels().factor_backward(pdy, pz, pbt, scale, pdz + column, ldz, pdb, T, K, r);
}

}  // namespace

void bind_ops(py::module_& m) {
  using py::arg;
  m.def("rms_norm_forward", &rms_norm_forward, arg("x"), arg("weight"), arg("eps"), arg("out"),
        arg("rstd"),
        "out[T,C] = x * rstd[:,None] * weight, rstd[T] = 1/sqrt(mean(x^2) + eps) (saved for the "
        "backward); x float32 or uint16 (bfloat16 bits, a compact kept array).");
  m.def("rms_norm_backward", &rms_norm_backward, arg("dout"), arg("x"), arg("weight"), arg("rstd"),
        arg("dx"), arg("dweight") = py::none(), arg("residual") = py::none(),
        "dx[T,C] overwritten, plus residual[T,C] when given (a residual branch's gradient, added "
        "in the same pass); dweight[C] accumulated (+=) when given; x float32 or uint16 "
        "(bfloat16 bits, a compact kept array).");
  def_rope(m, "rope_forward", "x", "out", false,
           "Rotary embedding of x[T,H,D] at int32 positions pos[T], ggml_rope_ext's semantics: "
           "mode 0 rotates pairs (2i, 2i+1), mode 2 (neox) pairs (i, i+n_dims/2); theta_i = pos "
           "* freq_scale * freq_base^(-2i/n_dims) / freq_factors[i] (float32 [n_dims/2], llama "
           "3.1's rope_freqs; None = 1); ext_factor != 0 turns on YaRN (ramp between "
           "interpolated and extrapolated theta over ggml_rope_yarn_corr_dims(n_dims, "
           "n_ctx_orig, freq_base, beta_fast, beta_slow), magnitude attn_factor * (1 + 0.1 "
           "ln(1/freq_scale))); otherwise the rotation is scaled by attn_factor. Dims >= n_dims "
           "pass through. out may be x.");
  def_rope(m, "rope_backward", "dout", "dx", true,
           "dx = the transpose of rope_forward's rotation applied to dout (the same magnitude, "
           "-theta); overwritten, may be dout.");
  m.def("attention_forward", &attention_forward, arg("q"), arg("k"), arg("v"), arg("scale"),
        arg("out"), arg("lse"), arg("first_key") = py::none(), arg("tiles") = "f32",
        arg("out_bf16") = py::none(),
        "Causal GQA attention: q[B,S,Hq,D], k/v[B,Skv,Hkv,D] (Skv >= S; query i sees keys "
        "first_key[b,i] <= j <= i + Skv - S; head h reads KV head h // (Hq/Hkv)); first_key is "
        "None (0 everywhere) or int32 [B,S] (sliding windows, packed samples); writes "
        "out[B,S,Hq,D] and lse[B,Hq,S], the log-sum-exp of the scaled scores. tiles 'f32' "
        "multiplies float32 operands; 'bf16' rounds the products' operands to bfloat16 and "
        "accumulates in float32 (vdpbf16ps, avx512 tier; float32 tiles on the others); the "
        "softmax is float32 either way. out_bf16 (uint16 [B,S,Hq,D]), when given, also receives "
        "the bfloat16 bits of out (a training layer's compact copy).");
  m.def("attention_backward", &attention_backward, arg("dout"), arg("q"), arg("k"), arg("v"),
        arg("out"), arg("lse"), arg("scale"), arg("dq"), arg("dk"), arg("dv"),
        arg("first_key") = py::none(), arg("tiles") = "f32",
        "Overwrites dq, dk, dv (dk/dv summed over the query heads sharing a KV head); "
        "first_key as given to the forward; tiles as attention_forward's; out float32 or uint16 "
        "(its bfloat16 bits, out_bf16 of the forward).");
  m.def(
      "attention_backward_scratch_bytes",
      [](int64_t B, int64_t S, int64_t Skv, int64_t Hq, int64_t Hkv, int64_t D,
         const std::string& tiles) {
        return ops::attention_backward_scratch_bytes(AttentionShape{B, S, Skv, Hq, Hkv, D},
                                                     attention_tiles_of(tiles));
      },
      arg("B"), arg("S"), arg("Skv"), arg("Hq"), arg("Hkv"), arg("D"), arg("tiles") = "f32",
      "Bytes of scratch attention_backward allocates for these shapes on the active tier, at "
      "any thread count (q and dout transposed or as bf16 pairs, partial dq per key chunk, row "
      "deltas): for memory plans. With an even D the 'bf16' figure is at most the 'f32' one.");
  def_gated(m, "swiglu", &ops::ActivationKernels::swiglu_forward,
            &ops::ActivationKernels::swiglu_backward, &ops::ActivationKernels::swiglu_backward_bf16,
            "out[T,F] = silu(gate) * up; gate_bf16, up_bf16 (uint16 [T,F], both or neither) receive "
            "the bfloat16 bits of gate and up from the same pass.");
  def_gated(m, "geglu", &ops::ActivationKernels::geglu_forward,
            &ops::ActivationKernels::geglu_backward, &ops::ActivationKernels::geglu_backward_bf16,
            "out[T,F] = gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + "
            "0.044715 x^3))), computed exactly (ggml's CPU kernel reads an f16 table); gate_bf16, "
            "up_bf16 as swiglu_forward's.");
  m.def(
      "geglu_ggml_forward",
      [](const py::array& gate, const py::array& up, py::array& out) {
        const GatedOperands o = gated_operands(gate, up, out);
        py::gil_scoped_release nogil;
        ops::activation_kernels().geglu_ggml_forward(o.gate, o.up, o.out, o.T * o.F);
      },
      arg("gate"), arg("up"), arg("out"),
      "out[T,F] = gelu(gate) * up as ggml-cpu computes it (GGML_GELU_FP16): 0 for gate <= -10, "
      "gate * up for gate >= 10, else a float16 table of gelu_tanh read at gate rounded to float16 "
      "(inference at precision \"ggml\"; no backward).");
  m.def("add_bias", &add_bias, arg("y"), arg("bias"), "y[T,N] += bias[N], in place.");
  m.def("bias_backward", &bias_backward, arg("dy"), arg("dbias"), arg("accumulate") = false,
        "dbias[N] = (or += when accumulate) the column sums of dy[T,N], rows in order.");
  m.def("cross_entropy_forward", &cross_entropy_forward, arg("logits"), arg("targets"),
        arg("loss"),
        "loss[t] = -log softmax(logits[t])[targets[t]] (float32 [T,V], int32 [T]); rows with a "
        "target < 0 are ignored (loss 0).");
  m.def("cross_entropy_backward", &cross_entropy_backward, arg("logits"), arg("targets"),
        arg("scale"), arg("dlogits"), arg("loss") = py::none(),
        "dlogits[T,V] = scale * (softmax - onehot) on kept rows, 0 on ignored rows (overwritten; "
        "may be logits itself); loss[T], when given, receives cross_entropy_forward's losses "
        "(the same bits) from the same pass.");
  m.def("embedding_backward", &embedding_backward, arg("dout"), arg("ids"), arg("dtable"),
        "dtable[ids[t]] += dout[t] (float32 [T,C], int32 [T], [V,C]); deterministic.");
  m.def("add", &add, arg("a"), arg("b"), arg("out"), arg("out_bf16") = py::none(),
        "out = a + b, element-wise, same shapes; out_bf16 (uint16, the same shape), when given, "
        "also receives the bfloat16 bits of out.");
  m.def("lora_project", &lora_project, arg("x"), arg("a"), arg("z"),
        "z[T,r] = x[T,K] @ a[r,K]^T (overwritten): a LoRA down-projection, x streamed once.");
  m.def("lora_expand", &lora_expand, arg("z"), arg("b"), arg("y"), arg("scale") = 1.0f,
        "y[T,K] += scale * z[T,r] @ b[r,K]: a LoRA up-projection added into y.");
  m.def("lora_outer", &lora_outer, arg("z"), arg("x"), arg("g"), arg("scale") = 1.0f,
        "g[r,K] += scale * z[T,r]^T @ x[T,K]: a LoRA factor gradient (dA += dz^T x), rows summed "
        "in order; x float32 or uint16 (bfloat16 bits).");
  m.def("lora_factor_backward", &lora_factor_backward, arg("dy"), arg("z"), arg("bt"), arg("scale"),
        arg("dz"), arg("column"), arg("db"),
        "The output side of a LoRA backward in one pass over dy[T,K]: dz[:, column:column+r] = "
        "scale * dy @ bt^T (overwritten; dz = s dy B with bt = B^T [r,K]) and db[K,r] += scale * "
        "dy^T @ z[T,r] (dB += s dy^T z). dB sums rows in fixed blocks, then the blocks in order: "
        "the same bits at any thread count.");
  m.def("scale_add", &scale_add, arg("out"), arg("x"), arg("alpha"),
        "out += alpha * x, element-wise, same shapes.");
}

}  // namespace ggtune::bind
