// Cross-entropy over the vocabulary from logits with integer targets, forward and backward.
// Legend: T tokens (rows), V vocabulary. A target < 0 marks an ignored row.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct LossKernels {
  // loss[t] = logsumexp(logits[t]) - logits[t, target[t]], 0 on ignored rows.
  void (*cross_entropy_forward)(const float* logits /*[T,V]*/, const int32_t* targets /*[T]*/,
                                float* loss /*[T]*/, int64_t T, int64_t V);
  // dlogits = scale * (softmax(logits) - onehot(target)) on kept rows, 0 on ignored rows;
  // overwritten, and may be the logits buffer itself. loss, when not null, receives the
  // forward's loss (the same bits) from the same pass: training needs no forward call.
  void (*cross_entropy_backward)(const float* logits /*[T,V]*/, const int32_t* targets /*[T]*/,
                                 float scale, float* dlogits /*[T,V]*/, float* loss /*[T] or null*/,
                                 int64_t T, int64_t V);
};

const LossKernels& loss_kernels();  // the active tier's kernels

#if defined(__x86_64__)
extern const LossKernels loss_kernels_avx2, loss_kernels_avx512;
#endif

}  // namespace ggtune::ops
