// Peak-rate loops (peaks.h): the scalar loop, the tier switch and the timing.
#include "bench/peaks.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <stdexcept>

#include "dispatch.h"
#include "parallel.h"

namespace ggtune::bench {
namespace {

volatile float g_sink;  // keeps the scalar chains alive

// Eight independent FMA chains: enough to cover the latency of one scalar FMA pipe pair.
int64_t peak_loop_scalar(int64_t iterations) {
  float acc[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float a = 0.999f, b = 1e-7f;
  for (int64_t it = 0; it < iterations; ++it)
    for (float& v : acc) v = std::fma(v, a, b);
  float sum = 0;
  for (float v : acc) sum += v;
  g_sink = sum;
  return iterations * 8 * 2;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

}  // namespace

int64_t peak_loop(PeakKind kind, int64_t iterations) {
  if (kind != PeakKind::int8 && kind != PeakKind::bf16 && kind != PeakKind::f32)
    return kernel_loop(kind, iterations);
  switch (active_isa()) {
#if defined(__x86_64__)
    case Isa::avx512: return peak_loop_avx512(kind, iterations);
    case Isa::avx2: return peak_loop_avx2(kind, iterations);
#endif
    default: return kind == PeakKind::f32 ? peak_loop_scalar(iterations) : 0;
  }
}

double peak_rate(PeakKind kind, int threads, double seconds, bool cpu_time) {
  if (peak_loop(kind, 1) == 0)
    throw std::invalid_argument("the active tier has no instruction for this kind");
  threads = std::max(threads, 1);
  // Calibrate one thread's iteration count to about a fifth of `seconds`.
  int64_t iterations = 1 << 14;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    peak_loop(kind, iterations);
    const double t = seconds_since(start);
    if (t > 0.02 || iterations > (int64_t(1) << 40)) {
      iterations = std::max<int64_t>(1, int64_t(iterations * (seconds / 5) / t));
      break;
    }
    iterations *= 4;
  }
  double best = 0;
  if (cpu_time) {
    for (int round = 0; round < 5; ++round) {
      const double start = thread_cpu_seconds();
      const int64_t ops = peak_loop(kind, iterations);
      best = std::max(best, double(ops) / (thread_cpu_seconds() - start));
    }
    return best;
  }
  for (int round = 0; round < 5; ++round) {
    int64_t ops = 0;
    const auto start = std::chrono::steady_clock::now();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(+ : ops)
#endif
    for (int t = 0; t < threads; ++t) ops += peak_loop(kind, iterations);
    best = std::max(best, double(ops) / seconds_since(start));
  }
  return best;
}

}  // namespace ggtune::bench
