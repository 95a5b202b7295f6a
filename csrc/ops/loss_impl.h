// Cross-entropy kernels as templates over a vector type (see simd_vec.h); included once per tier.
#pragma once

#include "ops/loss.h"
#include "ops/simd_vec.h"
#include "parallel.h"

namespace ggtune::ops {
namespace {

struct RowSoftmax {
  float max;  // max of the row, subtracted before exp for range
  float sum;  // sum of exp(logit - max)
};

template <class V>
RowSoftmax row_softmax_stats(const float* row, int64_t n) {
  const float m = reduce_max<V>(row, n);
  const float s = reduce_sum<V>(n, [&](auto u, int64_t i) {
    using U = decltype(u);
    return U::exp(U::sub(U::load(row + i), U::set1(m)));
  });
  return {m, s};
}

// -log softmax(row)[target] from the row's statistics.
inline float row_loss(const RowSoftmax& st, const float* row, int32_t target) {
  return std::log(st.sum) + st.max - row[target];
}

template <class V>
void cross_entropy_forward_v(const float* logits, const int32_t* targets, float* loss, int64_t T,
                             int64_t Vocab) {
  parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (targets[t] < 0) {
        loss[t] = 0.0f;
        continue;
      }
      const float* row = logits + t * Vocab;
      const RowSoftmax st = row_softmax_stats<V>(row, Vocab);
      loss[t] = row_loss(st, row, targets[t]);
    }
  });
}

template <class V>
void cross_entropy_backward_v(const float* logits, const int32_t* targets, float scale,
                              float* dlogits, float* loss, int64_t T, int64_t Vocab) {
  parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* drow = dlogits + t * Vocab;
      if (targets[t] < 0) {
        std::memset(drow, 0, sizeof(float) * Vocab);
        if (loss) loss[t] = 0.0f;
        continue;
      }
      // Statistics first: the row is read whole before drow (possibly the same memory) is written.
      const float* row = logits + t * Vocab;
      const RowSoftmax st = row_softmax_stats<V>(row, Vocab);
      if (loss) loss[t] = row_loss(st, row, targets[t]);
      const float k = scale / st.sum;
      for_chunks<V>(Vocab, [&](auto u, int64_t i) {
        using U = decltype(u);
        U::store(drow + i, U::mul(U::exp(U::sub(U::load(row + i), U::set1(st.max))), U::set1(k)));
      });
      drow[targets[t]] -= scale;
    }
  });
}

template <class V>
constexpr LossKernels make_loss_kernels() {
  return {&cross_entropy_forward_v<V>, &cross_entropy_backward_v<V>};
}

}  // namespace
}  // namespace ggtune::ops
