// AVX-512 peak loops (peaks.h): twelve independent zmm accumulators per loop, enough to
// cover the 4-5 cycle latency of two pipes; the operands stay in registers.
#include <immintrin.h>

#include "bench/peaks.h"

namespace ggtune::bench {
namespace {

constexpr int kChains = 12;
volatile int g_sink;

template <class Vec, class Step>
int64_t run_chains(int64_t iterations, Vec init, Step step) {
  Vec acc[kChains];
  for (auto& v : acc) v = init;
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (auto& v : acc) v = step(v);
    // An empty asm that "reads" the accumulators keeps the compiler from merging iterations.
    __asm__ volatile("" : : "v"(acc[0]), "v"(acc[kChains - 1]));
  }
  int out = 0;
  for (const Vec& v : acc) {
    int lane;
    __builtin_memcpy(&lane, &v, sizeof(lane));
    out ^= lane;
  }
  g_sink = out;
  return iterations * kChains;
}

}  // namespace

int64_t peak_loop_avx512(PeakKind kind, int64_t iterations) {
  switch (kind) {
    case PeakKind::int8: {
      const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
      return 128 * run_chains(iterations, _mm512_setzero_si512(),
                              [&](__m512i v) { return _mm512_dpbusd_epi32(v, a, b); });
    }
    case PeakKind::bf16: {
      const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
      return 64 * run_chains(iterations, _mm512_setzero_ps(),
                             [&](__m512 v) { return _mm512_dpbf16_ps(v, a, a); });
    }
    case PeakKind::f32: {
      const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-7f);
      return 32 * run_chains(iterations, _mm512_set1_ps(1.0f),
                             [&](__m512 v) { return _mm512_fmadd_ps(v, a, b); });
    }
    default:  // the int8 engine's ceilings: kernel_loop
      return 0;
  }
}

}  // namespace ggtune::bench
