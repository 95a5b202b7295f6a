#include "bind/arrays.h"

namespace ggtune::bind {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void fail(const char* name, const std::string& what) {
  throw py::value_error(std::string(name) + ": " + what);
}

namespace {

// Same element type in native byte order. A dtype read from a file map may be spelled '<f4'
// rather than the native 'float32' object, so identity is not the test.
bool same_dtype(const py::dtype& got, const py::dtype& want) {
  if (got.num() != want.num()) return false;
  const char order = got.byteorder();
  const uint16_t probe = 1;
  const char little = *reinterpret_cast<const char*>(&probe) == 1 ? '<' : '>';
  return order == '=' || order == '|' || order == little;
}

}  // namespace

void check_array(const py::array& a, const char* name, const py::dtype& dtype,
                 std::initializer_list<int64_t> dims, bool writable) {
  if (!same_dtype(a.dtype(), dtype))
    fail(name, "expected dtype " + std::string(py::str(dtype)) + ", got " +
                   std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    fail(name, "expected a C-contiguous array (use numpy.ascontiguousarray)");
  if (writable && !a.writeable()) fail(name, "expected a writable array");
  if (a.ndim() != static_cast<py::ssize_t>(dims.size()))
    fail(name, "expected " + std::to_string(dims.size()) + " dimensions, got shape " + shape_str(a));
  int axis = 0;
  for (int64_t want : dims) {
    if (want != kAny && a.shape(axis) != want) {
      std::string expected = "(";
      int i = 0;
      for (int64_t d : dims) expected += (i++ ? ", " : "") + (d == kAny ? std::string("*") : std::to_string(d));
      fail(name, "expected shape " + expected + (dims.size() == 1 ? ",)" : ")") + ", got " + shape_str(a));
    }
    ++axis;
  }
}

}  // namespace ggtune::bind
