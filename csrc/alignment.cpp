#include "alignment.h"

#include <algorithm>
#include <vector>

#include "row_terms.h"
#include "rows.h"
#include "scalars.h"

namespace oprd {
namespace {

template <typename Acc>
void run(const AlignmentArgs& a) {
  const LayerTable student{reinterpret_cast<const char*>(a.s_base), reinterpret_cast<const int64_t*>(a.s_table),
                           a.s_seq, a.s_dtype};
  const LayerTable teacher{reinterpret_cast<const char*>(a.t_base), reinterpret_cast<const int64_t*>(a.t_table),
                           a.t_seq, a.t_dtype};
  const Slots slots{reinterpret_cast<const int64_t*>(a.order), reinterpret_cast<const int64_t*>(a.slot_rows),
                    reinterpret_cast<const int64_t*>(a.slot_start)};
  const int64_t* layer_map = reinterpret_cast<const int64_t*>(a.layer_map);
  const int64_t* grad_index = reinterpret_cast<const int64_t*>(a.grad_index);
  const Acc* layer_scale = reinterpret_cast<const Acc*>(a.layer_scale);
  Acc* row_loss = reinterpret_cast<Acc*>(a.row_loss);
  char* grad = reinterpret_cast<char*>(a.grad);
  const int64_t L = a.num_layers, n_sel = a.num_sel, dim = a.dim;
  const int64_t grad_row_bytes = dim * element_size(a.grad_dtype);
  const Acc inv_n = Acc(1) / static_cast<Acc>(std::max<int64_t>(n_sel, 1));

#pragma omp parallel
  {
    std::vector<Acc> s(dim), t(dim), g(dim);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < L * n_sel; ++task) {
      const int64_t layer = task / n_sel, slot = task % n_sel;
      const int64_t row = slots.row(slot);
      if (row < 0) continue;  // fewer distinct rows than entries
      const int64_t slice = grad != nullptr ? grad_index[layer] : -1;
      const int64_t t_layer = layer_map != nullptr ? layer_map[layer] : layer;
      const Acc scale = layer_scale != nullptr ? layer_scale[layer] : Acc(1);
      load_row(student.row(layer, row), student.dtype, student.stride_d(layer), dim, s.data());
      if (slice >= 0) std::fill(g.begin(), g.end(), Acc(0));
      for (int64_t j = slots.begin(slot); j < slots.end(slot); ++j) {
        const int64_t entry = slots.entry(j);
        load_row(teacher.row(t_layer, entry), teacher.dtype, teacher.stride_d(t_layer), dim, t.data());
        const Acc w = a.weights != 0 ? load_scalar<Acc>(a.weights, a.w_dtype, entry) : inv_n;
        const RowTerms<Acc> terms = row_terms(s.data(), t.data(), dim, a.loss_type);
        row_loss[layer * n_sel + entry] = w * terms.loss;
        if (slice >= 0) add_row_gradient(g.data(), s.data(), t.data(), dim, w * scale, terms);
      }
      if (slice >= 0) store_row(grad + (slice * a.num_rows + row) * grad_row_bytes, a.grad_dtype, dim, g.data());
    }
  }
  sum_rows_per_layer(row_loss, L, n_sel, reinterpret_cast<Acc*>(a.per_layer));
}

}  // namespace

void alignment_run(const AlignmentArgs& args) {
  if (args.fp64) {
    run<double>(args);
  } else {
    run<float>(args);
  }
}

}  // namespace oprd
