// The machine's own arithmetic peaks: register-only loops of one instruction, so the kernel
// benchmark can print each kernel as a fraction of what the core can retire.
//
// Kinds and the instruction timed (the widest the active tier has):
//   int8  vpdpbusd zmm    (avx512: 64 u8 x s8 multiply-adds = 128 ops per instruction)
//   bf16  vdpbf16ps zmm   (avx512: 32 bf16 pair products    =  64 flops)
//   f32   vfmadd231ps     (avx512 zmm: 32 flops; avx2 ymm: 16; scalar: std::fma, 2)
#pragma once

#include <cstdint>

namespace ggtune::bench {

enum class PeakKind { int8, bf16, f32 };

// Operations (multiply and add counted apart) one thread retires in `iterations` passes of
// its loop, or 0 when the active tier lacks the instruction.
int64_t peak_loop(PeakKind kind, int64_t iterations);
int64_t peak_loop_avx512(PeakKind kind, int64_t iterations);
int64_t peak_loop_avx2(PeakKind kind, int64_t iterations);

// Ops per second of `threads` threads running the loop at once for about `seconds`:
// the best of a few rounds. cpu_time (one thread only): per second of the thread's CPU time,
// which time slices given to other processes do not count. Throws std::invalid_argument when
// the tier lacks the kind.
double peak_rate(PeakKind kind, int threads, double seconds, bool cpu_time = false);

}  // namespace ggtune::bench
