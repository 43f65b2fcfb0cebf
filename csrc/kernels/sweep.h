// The traversal shared by the loss kernels: which (layer, slot) pairs run, in what order, and where each gradient row
// goes. Layers without a gradient run one task per (layer, slot). Layers with one run one task per row of their
// dense gradient, in memory order, so every page of it is first written once, by the thread that fills it: selected
// rows get their gradient, the others zeros (the Python side allocates the gradients uninitialised).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rows.h"

namespace oprd {
namespace OPRD_ISA {

struct GradientRows {
  const int64_t* table;  // int64 [L_g]: address of each dense gradient [B*S, D]; null: no gradient at all
  const int64_t* index;  // int64 [L]: entry of `table` per layer, -1 for none
  int64_t row_bytes;

  bool wanted(int64_t layer) const { return table != nullptr && index[layer] >= 0; }
  char* row(int64_t layer, int64_t row) const {
    return reinterpret_cast<char*>(table[index[layer]]) + row * row_bytes;
  }
};

// The size of the OpenMP team running the calling code (1 outside a parallel region or without OpenMP).
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Calls process(scratch, layer, slot, out) for every layer and every used slot, with out = the slot's gradient row
// (or null when the layer wants none), from an OpenMP team of `threads` threads in which each thread owns one
// `make_scratch()` result. Returns the team size the runtime gave.
template <typename MakeScratch, typename Process>
int sweep(int64_t num_layers, int64_t num_sel, int64_t num_rows, const Slots& slots, const GradientRows& grads,
          int threads, MakeScratch make_scratch, Process process) {
  std::vector<int64_t> by_slot, dense;
  for (int64_t l = 0; l < num_layers; ++l) (grads.wanted(l) ? dense : by_slot).push_back(l);
  std::vector<int64_t> slot_of_row;
  if (!dense.empty()) {
    slot_of_row.assign(static_cast<size_t>(num_rows), -1);
    for (int64_t u = 0; u < num_sel; ++u) {
      if (slots.row(u) >= 0) slot_of_row[slots.row(u)] = u;
    }
  }
  const int64_t n_by_slot = static_cast<int64_t>(by_slot.size()) * num_sel;
  const int64_t n_dense = static_cast<int64_t>(dense.size()) * num_rows;
  int team = 1;
  (void)threads;  // unused without OpenMP
#pragma omp parallel num_threads(threads)
  {
#pragma omp master
    team = team_size();
    auto scratch = make_scratch();
#pragma omp for schedule(static) nowait
    for (int64_t task = 0; task < n_by_slot; ++task) {
      const int64_t u = task % num_sel;
      if (slots.row(u) >= 0) process(scratch, by_slot[task / num_sel], u, static_cast<char*>(nullptr));
    }
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n_dense; ++task) {
      const int64_t layer = dense[task / num_rows], row = task % num_rows;
      char* out = grads.row(layer, row);
      const int64_t u = slot_of_row[row];
      if (u < 0) {
        std::memset(out, 0, static_cast<size_t>(grads.row_bytes));
      } else {
        process(scratch, layer, u, out);
      }
    }
  }
  return team;
}

}  // namespace OPRD_ISA
}  // namespace oprd
