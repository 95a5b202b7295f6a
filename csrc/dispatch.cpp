#include "dispatch.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ggtune {
namespace {

Isa detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
  if (avx512) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::avx2;
#endif
  return Isa::scalar;
}

Isa initial_active() {
  const Isa best = detect();
  const char* env = std::getenv("GGTUNE_ISA");
  Isa wanted;
  if (env && *env && parse_isa(env, &wanted) && wanted < best) return wanted;
  return best;
}

Isa g_detected = detect();
Isa g_active = initial_active();

}  // namespace

Isa detected_isa() { return g_detected; }
Isa active_isa() { return g_active; }

void set_isa(Isa isa) {
  if (isa > g_detected)
    throw std::invalid_argument(std::string("this CPU does not support the ") + isa_name(isa) +
                                " tier (best: " + isa_name(g_detected) + ")");
  g_active = isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace ggtune
