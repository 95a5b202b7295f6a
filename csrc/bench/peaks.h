// The machine's own arithmetic peaks: register-only loops of one instruction, so the kernel
// benchmark can print each kernel as a fraction of what the core can retire.
//
// Kinds and the instruction timed (the widest the active tier has):
//   int8  vpdpbusd zmm    (avx512: 64 u8 x s8 multiply-adds = 128 ops per instruction)
//   bf16  vdpbf16ps zmm   (avx512: 32 bf16 pair products    =  64 flops)
//   f32   vfmadd231ps     (avx512 zmm: 32 flops; avx2 ymm: 16; scalar: std::fma, 2)
// and the int8 engine's ceilings (avx512): its micro-kernel itself (gemm/qgemm.h) on one
// MR x 32 tile of K = 576 whose operands stay in L1, so only its own instruction mix (the
// per-block float work beside the vpdpbusd) limits it, not packing, quantization or caches:
//   int8_affine         the affine kernel (Q4_1, Q5_1, Q4_K, Q5_K forward)
//   int8_symmetric      the symmetric kernel (Q8_0, Q4_0, Q5_0 and requantized forward)
//   int8_column_scaled  the column-scaled kernel (every backward)
#pragma once

#include <cstdint>

namespace ggtune::bench {

enum class PeakKind { int8, bf16, f32, int8_affine, int8_symmetric, int8_column_scaled };

// Ops of `iterations` calls of the int8 micro-kernel of an int8_* kind, or 0 off avx512.
int64_t kernel_loop(PeakKind kind, int64_t iterations);

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
