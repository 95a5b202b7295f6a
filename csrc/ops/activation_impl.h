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

template <class V>
void swiglu_forward_v(const float* gate, const float* up, float* out, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto g = U::load(gate + i);
    U::store(out + i, U::mul(U::mul(g, sigmoid<U>(g)), U::load(up + i)));
  });
}

// d silu(g)/dg = s * (1 + g * (1 - s)) with s = sigmoid(g).
template <class V>
void swiglu_backward_v(const float* dout, const float* gate, const float* up, float* dgate,
                       float* dup, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    const auto g = U::load(gate + i), d = U::load(dout + i), one = U::set1(1.0f);
    const auto s = sigmoid<U>(g);
    const auto dsilu = U::mul(s, U::fmadd(g, U::sub(one, s), one));
    U::store(dgate + i, U::mul(U::mul(d, U::load(up + i)), dsilu));
    U::store(dup + i, U::mul(d, U::mul(g, s)));
  });
}

template <class V>
void add_v(const float* a, const float* b, float* out, int64_t n) {
  elementwise<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    U::store(out + i, U::add(U::load(a + i), U::load(b + i)));
  });
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
  return {&swiglu_forward_v<V>, &swiglu_backward_v<V>, &add_v<V>, &scale_add_v<V>};
}

}  // namespace
}  // namespace ggtune::ops
