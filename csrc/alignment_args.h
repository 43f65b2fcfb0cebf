// Arguments of the fused multi-layer alignment loss on CPU tensors (semantics: oprd_kernels/reference/alignment.py).
#pragma once

#include <cstdint>

namespace oprd {

// Everything one call needs, as raw addresses, sizes and dtype codes (filled by oprd_kernels/cpu_ops/_args.py).
// Address 0 means "absent". alignment_run checks the fields first (csrc/guards.cpp) and raises ValueError naming
// the first wrong one.
struct AlignmentArgs {
  uintptr_t s_base = 0, s_table = 0;  // student layer table, see rows.h
  int64_t s_seq = 1;
  int s_dtype = 0;
  uintptr_t t_base = 0, t_table = 0;  // teacher cache layer table
  int64_t t_layers = 0;               // L_t: entries of t_table (bounds layer_map)
  int64_t t_seq = 1;
  int t_dtype = 0;
  int64_t num_layers = 0, num_rows = 0, num_sel = 0, dim = 0;
  uintptr_t order = 0, slot_rows = 0, slot_start = 0;  // row slots; all 0 without `rows`
  uintptr_t weights = 0;  // [N_sel] or 0 for 1/N_sel
  int w_dtype = 0;
  uintptr_t layer_map = 0;  // int64 [L] or 0 for identity
  int loss_type = 0;        // row_terms.h LossType
  bool fp64 = false;        // accumulate (and write row_loss, per_layer, layer_scale) in double, else float
  uintptr_t row_loss = 0;   // out: [L, N_sel] weighted row losses (required)
  uintptr_t per_layer = 0;  // out: [L] sums over rows, in entry order (required)
  uintptr_t grad_table = 0;  // int64 [L_g]: addresses of the dense gradients [B*S, D] (grad_dtype); 0: no gradient
  int64_t grad_count = 0;  // L_g: entries of grad_table
  int grad_dtype = 0;
  uintptr_t grad_index = 0;   // int64 [L]: entry of grad_table per layer, -1 for none
  uintptr_t layer_scale = 0;  // [L] gradient scale per layer, or 0 for 1
  int num_threads = 0;        // OpenMP team size (the caller's torch.get_num_threads()); 0: the OpenMP default
};

}  // namespace oprd
