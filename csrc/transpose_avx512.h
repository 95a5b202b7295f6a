// A 16 x 8 dword transpose in AVX-512 registers, for the layouts that put one row's consecutive
// dwords into one lane of several vectors (the int8 GEMM's packed codes, attention's bf16 pairs):
// unpacks and one two-source permute, where one 16-lane gather per output vector costs about
// four times the instructions on Zen 4.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ggtune {

// out[g] lane i = dword g of row i, for rows i < 16 of 8 dwords at `rows` + i * ld bytes.
// Rows i and i + 8 share a register; each 256-bit half is then an 8 x 8 transpose.
inline void transpose_16x8_dwords(const void* rows, int64_t ld, __m512i (&out)[8]) {
  const auto* base = static_cast<const uint8_t*>(rows);
  __m512i r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) {
    const auto* lo = reinterpret_cast<const __m256i*>(base + i * ld);
    const auto* hi = reinterpret_cast<const __m256i*>(base + (i + 8) * ld);
    r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(lo)), _mm256_loadu_si256(hi), 1);
  }
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; ++k) {
      u[i + 2 * k] = _mm512_unpacklo_epi64(t[i + k], t[i + k + 2]);
      u[i + 2 * k + 1] = _mm512_unpackhi_epi64(t[i + k], t[i + k + 2]);
    }
  // u[q] (q < 4) holds dword q of rows 0-3 in 128-bit lanes 0 and 2 (rows 8-11) and dword q + 4
  // in lanes 1 and 3; u[q + 4] the same of rows 4-7 (12-15).
  const __m512i low = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i high = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int q = 0; q < 4; ++q) {
    out[q] = _mm512_permutex2var_epi64(u[q], low, u[q + 4]);
    out[q + 4] = _mm512_permutex2var_epi64(u[q], high, u[q + 4]);
  }
}

}  // namespace ggtune
