// The oprd_kernels._C Python module: binds the C++ entry points. No torch headers anywhere in csrc/: the Python
// wrappers (oprd_kernels/cpu_ops/) validate the tensors and pass addresses, sizes, strides and dtype codes; the
// entry points check those again (csrc/guards.cpp) and raise ValueError (std::invalid_argument) on a wrong one.
#include <pybind11/pybind11.h>

#include "build_info.h"
#include "kernels.h"

namespace py = pybind11;

#define OPRD_FIELD(cls, name) .def_readwrite(#name, &cls::name)

PYBIND11_MODULE(_C, m) {
  m.doc() = "oprd C++ kernels (CPU; CUDA C++ when built with OPRD_WITH_CUDA=1)";
  m.def("build_info", &oprd::build_info, "Compiler, OpenMP, CUDA and SIMD facts of this build, as a dict.");
  m.def("kernel_isa", &oprd::kernel_isa, "The instruction-set variant of the CPU kernels this processor runs.");

  py::class_<oprd::AlignmentArgs>(m, "AlignmentArgs", "Arguments of alignment_run (see csrc/alignment_args.h).")
      .def(py::init<>())
      OPRD_FIELD(oprd::AlignmentArgs, s_base) OPRD_FIELD(oprd::AlignmentArgs, s_table)
      OPRD_FIELD(oprd::AlignmentArgs, s_seq) OPRD_FIELD(oprd::AlignmentArgs, s_dtype)
      OPRD_FIELD(oprd::AlignmentArgs, t_base) OPRD_FIELD(oprd::AlignmentArgs, t_table)
      OPRD_FIELD(oprd::AlignmentArgs, t_seq) OPRD_FIELD(oprd::AlignmentArgs, t_dtype)
      OPRD_FIELD(oprd::AlignmentArgs, num_layers) OPRD_FIELD(oprd::AlignmentArgs, num_rows)
      OPRD_FIELD(oprd::AlignmentArgs, num_sel) OPRD_FIELD(oprd::AlignmentArgs, dim)
      OPRD_FIELD(oprd::AlignmentArgs, order) OPRD_FIELD(oprd::AlignmentArgs, slot_rows)
      OPRD_FIELD(oprd::AlignmentArgs, slot_start) OPRD_FIELD(oprd::AlignmentArgs, weights)
      OPRD_FIELD(oprd::AlignmentArgs, w_dtype) OPRD_FIELD(oprd::AlignmentArgs, layer_map)
      OPRD_FIELD(oprd::AlignmentArgs, loss_type) OPRD_FIELD(oprd::AlignmentArgs, fp64)
      OPRD_FIELD(oprd::AlignmentArgs, row_loss) OPRD_FIELD(oprd::AlignmentArgs, per_layer)
      OPRD_FIELD(oprd::AlignmentArgs, grad_table) OPRD_FIELD(oprd::AlignmentArgs, grad_dtype)
      OPRD_FIELD(oprd::AlignmentArgs, grad_index) OPRD_FIELD(oprd::AlignmentArgs, layer_scale)
      OPRD_FIELD(oprd::AlignmentArgs, t_layers) OPRD_FIELD(oprd::AlignmentArgs, grad_count)
      OPRD_FIELD(oprd::AlignmentArgs, num_threads);
  m.def("alignment_run", &oprd::alignment_run, py::arg("args"), py::call_guard<py::gil_scoped_release>(),
        "Fused alignment loss (and gradient when args.grad_table is set) over CPU memory, on args.num_threads "
        "OpenMP threads (0: the OpenMP default). Raises ValueError naming the first wrong field of args; returns "
        "the OpenMP team size it ran with.");

  py::class_<oprd::BridgeArgs>(m, "BridgeArgs", "Arguments of bridge_run (see csrc/bridge_args.h).")
      .def(py::init<>())
      OPRD_FIELD(oprd::BridgeArgs, s_base) OPRD_FIELD(oprd::BridgeArgs, s_table)
      OPRD_FIELD(oprd::BridgeArgs, s_seq) OPRD_FIELD(oprd::BridgeArgs, s_dtype)
      OPRD_FIELD(oprd::BridgeArgs, z_base) OPRD_FIELD(oprd::BridgeArgs, z_table)
      OPRD_FIELD(oprd::BridgeArgs, z_seq) OPRD_FIELD(oprd::BridgeArgs, z_dtype)
      OPRD_FIELD(oprd::BridgeArgs, proj) OPRD_FIELD(oprd::BridgeArgs, p_dtype)
      OPRD_FIELD(oprd::BridgeArgs, p_stride_l) OPRD_FIELD(oprd::BridgeArgs, p_stride_r)
      OPRD_FIELD(oprd::BridgeArgs, p_stride_d) OPRD_FIELD(oprd::BridgeArgs, num_layers)
      OPRD_FIELD(oprd::BridgeArgs, num_rows) OPRD_FIELD(oprd::BridgeArgs, num_sel)
      OPRD_FIELD(oprd::BridgeArgs, dim) OPRD_FIELD(oprd::BridgeArgs, rank)
      OPRD_FIELD(oprd::BridgeArgs, order) OPRD_FIELD(oprd::BridgeArgs, slot_rows)
      OPRD_FIELD(oprd::BridgeArgs, slot_start) OPRD_FIELD(oprd::BridgeArgs, weights)
      OPRD_FIELD(oprd::BridgeArgs, w_dtype) OPRD_FIELD(oprd::BridgeArgs, loss_type)
      OPRD_FIELD(oprd::BridgeArgs, fp64) OPRD_FIELD(oprd::BridgeArgs, row_loss)
      OPRD_FIELD(oprd::BridgeArgs, per_layer) OPRD_FIELD(oprd::BridgeArgs, grad_table)
      OPRD_FIELD(oprd::BridgeArgs, grad_dtype) OPRD_FIELD(oprd::BridgeArgs, grad_index)
      OPRD_FIELD(oprd::BridgeArgs, layer_scale) OPRD_FIELD(oprd::BridgeArgs, proj_grad)
      OPRD_FIELD(oprd::BridgeArgs, dz) OPRD_FIELD(oprd::BridgeArgs, z_layers)
      OPRD_FIELD(oprd::BridgeArgs, grad_count) OPRD_FIELD(oprd::BridgeArgs, num_threads);
  m.def("bridge_run", &oprd::bridge_run, py::arg("args"), py::call_guard<py::gil_scoped_release>(),
        "Fused Bridge loss (and gradients when asked) over CPU memory; threads, errors and result as alignment_run.");
}
