// Single values and the deterministic per-layer reduction shared by the loss kernels.
#pragma once

#include <cstdint>

#include "rows.h"

namespace oprd {
namespace OPRD_ISA {

template <typename Acc>
inline Acc load_scalar(uintptr_t base, int dtype, int64_t index) {
  Acc value;
  load_row(reinterpret_cast<const char*>(base) + index * element_size(dtype), dtype, 1, 1, &value);
  return value;
}

// per_layer[l] = sum over n of rows[l, n], summed in double in index order: the same bits for any thread count.
template <typename Acc>
void sum_rows_per_layer(const Acc* rows, int64_t num_layers, int64_t n, Acc* per_layer) {
  for (int64_t l = 0; l < num_layers; ++l) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += static_cast<double>(rows[l * n + i]);
    per_layer[l] = static_cast<Acc>(total);
  }
}

}  // namespace OPRD_ISA
}  // namespace oprd
