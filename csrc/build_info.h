// Facts about how oprd_kernels._C was compiled: compiler, OpenMP, CUDA, SIMD.
#pragma once

#include <pybind11/pybind11.h>

namespace oprd {

// A dict describing this build; reported by `python -m oprd_kernels`.
pybind11::dict build_info();

}  // namespace oprd
