// Threads: OpenMP when the compiler has it, serial otherwise. Kernels split work
// into static ranges so results never depend on scheduling.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ggtune {

int num_threads();
void set_num_threads(int n);   // n <= 0: the machine's cores

// Calls fn(begin, end) on disjoint ranges covering [0, n), at most one range per
// thread and none smaller than `grain` items (so tiny inputs stay on one thread).
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int64_t chunks = std::min<int64_t>(num_threads(), max_chunks);
  if (chunks <= 1) {
    fn(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
    if (begin < end) fn(begin, end);
  }
}

// Calls fn(i) for each i in [0, n), items handed out dynamically (uneven work, e.g. causal rows).
template <class Fn>
void parallel_for_each(int64_t n, Fn&& fn) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), n));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace ggtune
