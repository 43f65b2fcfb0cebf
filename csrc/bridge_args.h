// Arguments of the fused OPRD-Bridge loss on CPU tensors (semantics: oprd_kernels/reference/bridge.py).
#pragma once

#include <cstdint>

namespace oprd {

// As AlignmentArgs: filled by oprd_kernels/cpu_ops/_args.py, checked by bridge_run first (csrc/guards.cpp).
struct BridgeArgs {
  uintptr_t s_base = 0, s_table = 0;  // student layer table
  int64_t s_seq = 1;
  int s_dtype = 0;
  uintptr_t z_base = 0, z_table = 0;  // teacher_z layer table ([N_sel, r] per layer)
  int64_t z_layers = 0;               // entries of z_table: num_layers
  int64_t z_seq = 1;
  int z_dtype = 0;
  uintptr_t proj = 0;  // [L, r, D] with strides
  int p_dtype = 0;
  int64_t p_stride_l = 0, p_stride_r = 0, p_stride_d = 0;
  int64_t num_layers = 0, num_rows = 0, num_sel = 0, dim = 0, rank = 0;
  uintptr_t order = 0, slot_rows = 0, slot_start = 0;
  uintptr_t weights = 0;
  int w_dtype = 0;
  int loss_type = 0;
  bool fp64 = false;
  uintptr_t row_loss = 0, per_layer = 0;  // out, as in AlignmentArgs
  uintptr_t grad_table = 0;               // out: int64 [L_g] addresses of dense gradients [B*S, D], or 0
  int64_t grad_count = 0;                 // L_g
  int grad_dtype = 0;
  uintptr_t grad_index = 0, layer_scale = 0;
  uintptr_t proj_grad = 0;  // out: [L, r, D] (Acc) or 0
  uintptr_t dz = 0;         // scratch [L, N_sel, r] (Acc), required with proj_grad
  int num_threads = 0;      // as in AlignmentArgs
};

}  // namespace oprd
