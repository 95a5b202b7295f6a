// The pybind11 boundary: every kernel argument is checked here, so a wrong dtype,
// shape or layout becomes a ValueError naming the argument, never a crash. Arrays
// are used in place (zero copy); outputs are allocated by the caller or by the binding.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace ggtune::bind {

namespace py = pybind11;

// A dimension the caller does not constrain.
constexpr int64_t kAny = -1;

std::string shape_str(const py::array& a);

// Checks dtype, C-contiguity, writability, rank and any fixed dimensions.
// `dims` lists one entry per axis: kAny or the required size.
void check_array(const py::array& a, const char* name, const py::dtype& dtype,
                 std::initializer_list<int64_t> dims, bool writable);

template <class T>
T* data_of(py::array& a, const char* name, std::initializer_list<int64_t> dims, bool writable) {
  check_array(a, name, py::dtype::of<T>(), dims, writable);
  return static_cast<T*>(a.mutable_data());
}

template <class T>
const T* cdata_of(const py::array& a, const char* name, std::initializer_list<int64_t> dims) {
  check_array(a, name, py::dtype::of<T>(), dims, false);
  return static_cast<const T*>(a.data());
}

// Raises ValueError("<name>: <what>").
[[noreturn]] void fail(const char* name, const std::string& what);

inline int64_t dim(const py::array& a, int axis) { return static_cast<int64_t>(a.shape(axis)); }

}  // namespace ggtune::bind
