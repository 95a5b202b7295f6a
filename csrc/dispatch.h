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

// The kernel table of the active tier, for op families that compile one table per tier. The
// avx2 / avx512 tables exist on x86-64 only: pass them through GGTUNE_X86(&table), which is
// nullptr elsewhere (where active_isa() is always scalar).
template <class T>
struct NonDeduced {  // keeps a nullptr argument from taking part in deducing Table
  using type = T;
};
template <class Table>
const Table& active_table(const Table& scalar, const typename NonDeduced<Table>::type* avx2,
                          const typename NonDeduced<Table>::type* avx512) {
  switch (active_isa()) {
    case Isa::avx512: return *avx512;
    case Isa::avx2: return *avx2;
    case Isa::scalar: break;
  }
  return scalar;
}

}  // namespace ggtune

#if defined(__x86_64__)
#define GGTUNE_X86(table) (table)
#else
#define GGTUNE_X86(table) nullptr
#endif
