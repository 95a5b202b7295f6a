// Runtime CPU dispatch: the instruction-set tier is detected once, at import,
// and can be lowered (never raised) by GGTUNE_ISA=scalar|avx2|avx512 or set_isa().
//
// Tiers (x86-64):
//   avx512 : AVX-512 F/BW/VL/DQ + VNNI + BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later)
//   avx2   : AVX2 + FMA + F16C (Haswell and later)
//   scalar : portable C++, always compiled, the reference every SIMD variant is tested against
// Other architectures always run the scalar tier (the compiler may still vectorise it).
#pragma once

namespace ggtune {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

Isa detected_isa();          // best tier this CPU supports
Isa active_isa();            // tier kernels use now
void set_isa(Isa isa);       // throws std::invalid_argument above detected_isa()
const char* isa_name(Isa isa);
bool parse_isa(const char* name, Isa* out);

}  // namespace ggtune
