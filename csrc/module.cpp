// The oprd_kernels._C Python module: binds the C++ entry points. No torch headers anywhere in csrc/.
#include <pybind11/pybind11.h>

#include "build_info.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "oprd C++ kernels (CPU; CUDA C++ when built with OPRD_WITH_CUDA=1)";
  m.def("build_info", &oprd::build_info,
        "Compiler, OpenMP, CUDA and SIMD facts of this build, as a dict.");
}
