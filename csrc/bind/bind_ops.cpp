#include <pybind11/pybind11.h>

namespace ggtune::bind {
void bind_ops(pybind11::module_& m) {}
}  // namespace ggtune::bind
