#include "ops/embedding.h"

#include "parallel.h"

namespace ggtune::ops {

void embedding_backward(const float* dout, const int32_t* ids, float* dtable, int64_t T,
                        int64_t C) {
  parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t t = 0; t < T; ++t) {
      const float* src = dout + t * C;
      float* dst = dtable + int64_t(ids[t]) * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

}  // namespace ggtune::ops
