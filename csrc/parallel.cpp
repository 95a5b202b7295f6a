#include "parallel.h"

#include <thread>

namespace ggtune {
namespace {

int default_threads() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
#endif
}

int g_threads = default_threads();

}  // namespace

int num_threads() { return g_threads; }
void set_num_threads(int n) { g_threads = n > 0 ? n : default_threads(); }

}  // namespace ggtune
