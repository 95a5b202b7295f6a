// Element-wise kernels as templates over a vector type (see simd_vec.h); included once per tier.
#pragma once

#include "ops/activation.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

// Below this many elements per thread, starting threads costs more than it saves.
constexpr int64_t kElementGrain = 1 << 15;

// Runs body(U{}, i) over [0, n) in vector chunks, split over threads in static ranges.
template <class V, class Body>
void elementwise(int64_t n, Body&& body) {
  parallel_for(n, kElementGrain, [&](int64_t begin, int64_t end) {
    for_chunks<V>(end - begin, [&](auto u, int64_t i) { body(u, begin + i); });
  });
}

template <class U>
inline typename U::T sigmoid(typename U::T g) {
  const auto one = U::set1(1.0f);
  return U::div(one, U::add(one, U::exp(U::sub(U::zero(), g))));
}

// A gate act(g) = g * sigmoid(z(g)), with d act/dg = s * (1 + g * (1 - s) * z'(g)), s = sigmoid(z).
// SiLU: z = g. GELU-tanh: z = 2u, u = sqrt(2/pi) (g + 0.044715 g^3); g * sigmoid(2u) is the same
// function as 0.5 g (1 + tanh u), without tanh's cancellation near 0 or its overflow for large |u|.
struct SiluGate {
  template <class U>
  static typename U::T z(typename U::T g) { return g; }
  template <class U>
  static typename U::T derivative(typename U::T g, typename U::T s) {
    return U::mul(s, U::fmadd(g, U::sub(U::set1(1.0f), s), U::set1(1.0f)));
  }
};

struct GeluTanhGate {
  static constexpr float kLinear = 1.5957691216057308f;  // 2 sqrt(2/pi)
  static constexpr float kCubic = kLinear * 0.044715f;    // 2 sqrt(2/pi) * 0.044715
  template <class U>
  static typename U::T z(typename U::T g) {
    return U::mul(g, U::fmadd(U::mul(g, g), U::set1(kCubic), U::set1(kLinear)));
  }
  template <class U>
  static typename U::T derivative(typename U::T g, typename U::T s) {
    const auto dz = U::fmadd(U::mul(g, g), U::set1(3.0f * kCubic), U::set1(kLinear));
    return U::mul(s, U::fmadd(U::mul(g, U::sub(U::set1(1.0f), s)), dz, U::set1(1.0f)));
  }
};

// out = act(gate) * up, and with kCopies the bf16 bits of gate and up.
template <class V, class Gate, bool kCopies>
void gated_forward_pass(const float* gate, const float* up, float* out, uint16_t* gate_bf16,
                        uint16_t* up_bf16, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto g = U::load(gate + i), x = U::load(up + i);
    const auto s = sigmoid<U>(Gate::template z<U>(g));
    U::store(out + i, U::mul(U::mul(g, s), x));
    if constexpr (kCopies) {
      U::store_bf16(gate_bf16 + i, g);
      U::store_bf16(up_bf16 + i, x);
    }
  });
}

template <class V, class Gate>
void gated_forward_v(const float* gate, const float* up, float* out, uint16_t* gate_bf16,
                     uint16_t* up_bf16, int64_t n) {
  if (gate_bf16) gated_forward_pass<V, Gate, true>(gate, up, out, gate_bf16, up_bf16, n);
  else gated_forward_pass<V, Gate, false>(gate, up, out, nullptr, nullptr, n);
}

// out = gelu_ggml(gate) * up: ggml_vec_geglu_f32 with GGML_GELU_FP16 (activation.h).
template <class V>
void geglu_ggml_forward_v(const float* gate, const float* up, float* out, int64_t n) {
  const float* table = ggml_gelu_table();
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto g = U::load(gate + i), limit = U::set1(10.0f);
    // outside [-10, 10] ggml skips the table: 0 below (the table's -0 there is equal), g above
    const auto table_or_g = U::select_ge(g, limit, g, U::lookup_half(table, g));
    const auto gelu = U::zero_below(g, U::set1(-10.0f), table_or_g);
    U::store(out + i, U::mul(gelu, U::load(up + i)));
  });
}

// dgate = dout * up * act'(gate),  dup = dout * act(gate), and with kAct act = act(gate) * up
// (the forward's expression, so the same bits from the same inputs).
template <class V, class Gate, bool kAct, class In>
void gated_backward_pass(const float* dout, const In* gate, const In* up, float* dgate, float* dup,
                         float* act, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto g = load_as<U>(gate + i), x = load_as<U>(up + i), d = U::load(dout + i);
    const auto s = sigmoid<U>(Gate::template z<U>(g));
    const auto gs = U::mul(g, s);
    U::store(dgate + i, U::mul(U::mul(d, x), Gate::template derivative<U>(g, s)));
    U::store(dup + i, U::mul(d, gs));
    if constexpr (kAct) U::store(act + i, U::mul(gs, x));
  });
}

template <class V, class Gate, class In>
void gated_backward_v(const float* dout, const In* gate, const In* up, float* dgate, float* dup,
                      float* act, int64_t n) {
  if (act) gated_backward_pass<V, Gate, true>(dout, gate, up, dgate, dup, act, n);
  else gated_backward_pass<V, Gate, false>(dout, gate, up, dgate, dup, nullptr, n);
}

// Rows split over threads, at least kElementGrain elements each.
template <class V>
void add_bias_v(float* y, const float* bias, int64_t T, int64_t N) {
  const int64_t grain = N >= kElementGrain || N == 0 ? 1 : kElementGrain / N;
  parallel_for(T, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* row = y + t * N;
      for_chunks<V>(N, [&](auto u, int64_t i) {
        using U = decltype(u);
        U::store(row + i, U::add(U::load(row + i), U::load(bias + i)));
      });
    }
  });
}

// Columns split over threads: each dbias entry is summed by one thread in row order.
template <class V>
void bias_backward_v(const float* dy, float* dbias, int64_t T, int64_t N, bool accumulate) {
  parallel_for(N, 64, [&](int64_t c0, int64_t c1) {
    if (!accumulate) std::memset(dbias + c0, 0, sizeof(float) * (c1 - c0));
    for (int64_t t = 0; t < T; ++t) {
      const float* row = dy + t * N + c0;
      for_chunks<V>(c1 - c0, [&](auto u, int64_t i) {
        using U = decltype(u);
        U::store(dbias + c0 + i, U::add(U::load(dbias + c0 + i), U::load(row + i)));
      });
    }
  });
}

template <class V, bool kCopy>
void add_pass(const float* a, const float* b, float* out, uint16_t* out_bf16, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto sum = U::add(U::load(a + i), U::load(b + i));
    U::store(out + i, sum);
    if constexpr (kCopy) U::store_bf16(out_bf16 + i, sum);
  });
}

template <class V>
void add_v(const float* a, const float* b, float* out, uint16_t* out_bf16, int64_t n) {
  if (out_bf16) add_pass<V, true>(a, b, out, out_bf16, n);
  else add_pass<V, false>(a, b, out, nullptr, n);
}

template <class V>
void scale_add_v(float* out, const float* x, float alpha, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    U::store(out + i, U::fmadd(U::load(x + i), U::set1(alpha), U::load(out + i)));
  });
}

template <class V>
constexpr ActivationKernels make_activation_kernels() {
  return {&gated_forward_v<V, SiluGate>,
          &gated_backward_v<V, SiluGate, float>,
          &gated_backward_v<V, SiluGate, uint16_t>,
          &gated_forward_v<V, GeluTanhGate>,
          &geglu_ggml_forward_v<V>,
          &gated_backward_v<V, GeluTanhGate, float>,
          &gated_backward_v<V, GeluTanhGate, uint16_t>,
          &add_bias_v<V>,
          &bias_backward_v<V>,
          &add_v<V>,
          &scale_add_v<V>};
}

}  // namespace
}  // namespace ggtune::ops
