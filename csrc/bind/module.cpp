// The extension module ggtune._core. Each op family binds itself in its own file.
#include <pybind11/pybind11.h>

#include "dispatch.h"
#include "parallel.h"

namespace py = pybind11;

namespace ggtune::bind {
void bind_quant(py::module_& m);
void bind_matmul(py::module_& m);
void bind_ops(py::module_& m);
}  // namespace ggtune::bind

PYBIND11_MODULE(_core, m) {
  using namespace ggtune;
  m.doc() = "ggtune kernels: quantized matmul, llama ops and their backward passes";

  m.def("detected_isa", [] { return isa_name(detected_isa()); },
        "Best instruction-set tier of this CPU: 'avx512', 'avx2' or 'scalar'.");
  m.def("active_isa", [] { return isa_name(active_isa()); }, "Tier the kernels use now.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        Isa isa;
        if (!parse_isa(name.c_str(), &isa))
          throw py::value_error("isa: expected 'scalar', 'avx2' or 'avx512', got '" + name + "'");
        try {
          set_isa(isa);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(std::string("isa: ") + e.what());
        }
      },
      py::arg("isa"), "Force a tier at or below detected_isa() (tests use 'scalar').");
  m.def("num_threads", &num_threads, "Threads the kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Threads the kernels use; n <= 0 restores the default (the machine's cores).");

  bind::bind_quant(m);
  bind::bind_matmul(m);
  bind::bind_ops(m);
}
