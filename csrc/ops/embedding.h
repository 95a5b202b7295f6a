// Embedding table gradient: the scatter-add backward of the row gather.
// Legend: T tokens, V vocabulary (table rows), C channels.
#pragma once

#include <cstdint>

namespace ggtune::ops {

// dtable[ids[t], :] += dout[t, :] for every t (accumulates). ids must be in [0, V).
// Threads split the columns, so each entry is summed by one thread in token order:
// the result does not depend on the thread count.
void embedding_backward(const float* dout /*[T,C]*/, const int32_t* ids /*[T]*/,
                        float* dtable /*[V,C]*/, int64_t T, int64_t C);

}  // namespace ggtune::ops
