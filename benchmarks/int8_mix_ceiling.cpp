// The int8 micro-kernel's ceiling: its instruction mix in a loop with every operand in L1, so
// nothing but the mix limits it. A 6 x 32 tile, blocks of 32 along K, four forms of the per-block
// float work (csrc/gemm/qgemm_avx512.cpp):
//   affine-float : cvt, scale product, FMA, and the offset FMA (the affine kernel before integer offsets)
//   symmetric    : cvt, scale product, FMA (Q8_0/Q4_0/Q5_0; affine types with integer offsets
//                  add 1 vpdpwssd per 2 blocks to this)
//   column-scaled: cvt, FMA (the backward's requantized W)
//   integer-only : none (both operands with one scale per row and panel)
// Prints GOP/s (2 ops per multiply-add) on one thread; divide by `_core.peak_rate("int8", 1)`.
//
//   g++ -O3 -march=icelake-server benchmarks/int8_mix_ceiling.cpp -o /tmp/mix && /tmp/mix
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>

enum Form { kAffineFloat, kSymmetric, kColumnScaled, kIntegerOnly };
constexpr int kRows = 6, kBlocksInL1 = 8;

template <Form F>
__attribute__((noinline)) void tile(int64_t blocks, const int8_t* a, const float* ad, const float* as,
                                    const uint8_t* b, float* c) {
  __m512 acc[kRows][2];
  __m512i sum[kRows][2];
  for (int i = 0; i < kRows; ++i) {
    acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    sum[i][0] = sum[i][1] = _mm512_setzero_si512();
  }
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const uint8_t* bb = b + (blk % kBlocksInL1) * 1280;
    const int8_t* ab = a + (blk % kBlocksInL1) * 32;
    __m512i dot[kRows][2];
    for (int i = 0; i < kRows; ++i)
      dot[i][0] = F == kIntegerOnly ? sum[i][0] : _mm512_setzero_si512(),
      dot[i][1] = F == kIntegerOnly ? sum[i][1] : _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m512i b0 = _mm512_load_si512(bb + g * 128), b1 = _mm512_load_si512(bb + g * 128 + 64);
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) {
        int32_t v;
        std::memcpy(&v, ab + i * 256 + 4 * g, 4);
        const __m512i av = _mm512_set1_epi32(v);
        dot[i][0] = _mm512_dpbusd_epi32(dot[i][0], b0, av);
        dot[i][1] = _mm512_dpbusd_epi32(dot[i][1], b1, av);
      }
    }
    const float* dc = reinterpret_cast<const float*>(bb + 1024);
    const __m512 d0 = _mm512_load_ps(dc), d1 = _mm512_load_ps(dc + 16);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      const __m512 da = _mm512_set1_ps(ad[i * 8 + blk % kBlocksInL1]);
      if (F == kIntegerOnly) {
        sum[i][0] = dot[i][0], sum[i][1] = dot[i][1];
      } else if (F == kColumnScaled) {
        acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][0]), da, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][1]), da, acc[i][1]);
      } else {
        acc[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][0]), _mm512_mul_ps(d0, da), acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][1]), _mm512_mul_ps(d1, da), acc[i][1]);
      }
      if (F == kAffineFloat) {
        const __m512 sa = _mm512_set1_ps(as[i * 8 + blk % kBlocksInL1]);
        acc[i][0] = _mm512_fmadd_ps(_mm512_load_ps(dc + 32), sa, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(_mm512_load_ps(dc + 48), sa, acc[i][1]);
      }
    }
  }
  for (int i = 0; i < kRows; ++i) {
    if (F == kIntegerOnly) acc[i][0] = _mm512_cvtepi32_ps(sum[i][0]), acc[i][1] = _mm512_cvtepi32_ps(sum[i][1]);
    _mm512_storeu_ps(c + i * 32, acc[i][0]);
    _mm512_storeu_ps(c + i * 32 + 16, acc[i][1]);
  }
}

template <Form F>
double gops() {
  alignas(64) static int8_t a[kRows * 256];
  alignas(64) static uint8_t b[kBlocksInL1 * 1280];
  alignas(64) static float ad[64], as[64], c[kRows * 32];
  for (int i = 0; i < kRows * 256; ++i) a[i] = int8_t(i % 7 - 3);
  for (int i = 0; i < kBlocksInL1 * 1280; ++i) b[i] = uint8_t(i % 13);
  for (int i = 0; i < 64; ++i) ad[i] = as[i] = 0.01f;
  const int64_t blocks = int64_t(1) << 24;
  tile<F>(1000, a, ad, as, b, c);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  tile<F>(blocks, a, ad, as, b, c);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(blocks) * kRows * 32 * 32 * 2 / s / 1e9;
}

int main() {
  std::printf("GOP/s, 1 thread: affine-float %.0f  symmetric %.0f  column-scaled %.0f  integer-only %.0f\n",
              gops<kAffineFloat>(), gops<kSymmetric>(), gops<kColumnScaled>(), gops<kIntegerOnly>());
}
