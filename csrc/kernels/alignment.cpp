#include "alignment_args.h"
#include "kernels.h"

#include <algorithm>
#include <vector>

#include "row_terms.h"
#include "rows.h"
#include "scalars.h"
#include "sweep.h"

namespace oprd {
namespace OPRD_ISA {
namespace {

template <typename Acc>
class Alignment {
 public:
  explicit Alignment(const AlignmentArgs& a)
      : a_(a),
        student_{reinterpret_cast<const char*>(a.s_base), reinterpret_cast<const int64_t*>(a.s_table), a.s_seq,
                 a.s_dtype},
        teacher_{reinterpret_cast<const char*>(a.t_base), reinterpret_cast<const int64_t*>(a.t_table), a.t_seq,
                 a.t_dtype},
        slots_{reinterpret_cast<const int64_t*>(a.order), reinterpret_cast<const int64_t*>(a.slot_rows),
               reinterpret_cast<const int64_t*>(a.slot_start)},
        layer_map_(reinterpret_cast<const int64_t*>(a.layer_map)),
        layer_scale_(reinterpret_cast<const Acc*>(a.layer_scale)),
        row_loss_(reinterpret_cast<Acc*>(a.row_loss)),
        inv_n_(Acc(1) / static_cast<Acc>(std::max<int64_t>(a.num_sel, 1))) {}

  // Loss of every entry of `slot` in `layer`; with `g` (a scratch row) also their summed gradient, left in g.
  void slot(int64_t layer, int64_t slot, Acc* s, Acc* t, Acc* g) const {
    const int64_t dim = a_.dim, row = slots_.row(slot);
    const int64_t t_layer = layer_map_ != nullptr ? layer_map_[layer] : layer;
    const Acc scale = layer_scale_ != nullptr ? layer_scale_[layer] : Acc(1);
    load_row(student_.row(layer, row), student_.dtype, student_.stride_d(layer), dim, s);
    if (g != nullptr) std::fill(g, g + dim, Acc(0));
    for (int64_t j = slots_.begin(slot); j < slots_.end(slot); ++j) {
      const int64_t entry = slots_.entry(j);
      load_row(teacher_.row(t_layer, entry), teacher_.dtype, teacher_.stride_d(t_layer), dim, t);
      const Acc w = a_.weights != 0 ? load_scalar<Acc>(a_.weights, a_.w_dtype, entry) : inv_n_;
      const RowTerms<Acc> terms = row_terms(s, t, dim, a_.loss_type);
      row_loss_[layer * a_.num_sel + entry] = w * terms.loss;
      if (g != nullptr) add_row_gradient(g, s, t, dim, w * scale, terms);
    }
  }

  int run() const {
    const int64_t dim = a_.dim;
    const GradientRows grads{reinterpret_cast<const int64_t*>(a_.grad_table),
                             reinterpret_cast<const int64_t*>(a_.grad_index), dim * element_size(a_.grad_dtype)};
    struct Scratch {
      std::vector<Acc> s, t, g;
    };
    const auto make_scratch = [dim] {
      return Scratch{std::vector<Acc>(dim), std::vector<Acc>(dim), std::vector<Acc>(dim)};
    };
    const int team = sweep(
        a_.num_layers, a_.num_sel, a_.num_rows, slots_, grads, a_.num_threads, make_scratch,
        [&](Scratch& w, int64_t layer, int64_t u, char* out) {
          slot(layer, u, w.s.data(), w.t.data(), out != nullptr ? w.g.data() : nullptr);
          if (out != nullptr) store_row(out, a_.grad_dtype, dim, w.g.data());
        });
    sum_rows_per_layer(row_loss_, a_.num_layers, a_.num_sel, reinterpret_cast<Acc*>(a_.per_layer));
    return team;
  }

 private:
  const AlignmentArgs& a_;
  LayerTable student_, teacher_;
  Slots slots_;
  const int64_t* layer_map_;
  const Acc* layer_scale_;
  Acc* row_loss_;
  Acc inv_n_;
};

}  // namespace

int alignment_run(const AlignmentArgs& args) {
  return args.fp64 ? Alignment<double>(args).run() : Alignment<float>(args).run();
}

}  // namespace OPRD_ISA
}  // namespace oprd
