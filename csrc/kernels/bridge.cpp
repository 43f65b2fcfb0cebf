#include "bridge_args.h"
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

constexpr int64_t kColumnBlock = 256;  // columns of the projector gradient per task

template <typename Acc>
class Bridge {
 public:
  explicit Bridge(const BridgeArgs& a)
      : a_(a),
        student_{reinterpret_cast<const char*>(a.s_base), reinterpret_cast<const int64_t*>(a.s_table), a.s_seq,
                 a.s_dtype},
        teacher_z_{reinterpret_cast<const char*>(a.z_base), reinterpret_cast<const int64_t*>(a.z_table), a.z_seq,
                   a.z_dtype},
        slots_{reinterpret_cast<const int64_t*>(a.order), reinterpret_cast<const int64_t*>(a.slot_rows),
               reinterpret_cast<const int64_t*>(a.slot_start)},
        layer_scale_(reinterpret_cast<const Acc*>(a.layer_scale)),
        row_loss_(reinterpret_cast<Acc*>(a.row_loss)),
        dz_all_(reinterpret_cast<Acc*>(a.dz)),
        inv_n_(Acc(1) / static_cast<Acc>(std::max<int64_t>(a.num_sel, 1))),
        proj_(static_cast<size_t>(a.num_layers * a.rank * a.dim)) {
    // The projectors in Acc, contiguous [L, r, D]: converted once, then read from cache for every row.
    const int64_t p_size = element_size(a.p_dtype);
#pragma omp parallel for schedule(static) num_threads(a.num_threads)
    for (int64_t lk = 0; lk < a.num_layers * a.rank; ++lk) {
      const int64_t l = lk / a.rank, k = lk % a.rank;
      const char* src = reinterpret_cast<const char*>(a.proj) + (l * a.p_stride_l + k * a.p_stride_r) * p_size;
      load_row(src, a.p_dtype, a.p_stride_d, a.dim, proj_.data() + lk * a.dim);
    }
  }

  // Loss of every entry of `slot` in `layer`, their summed dL/dz (kept for the projector gradient when asked), and
  // with `g` the student row's gradient P^T dz, left in g.
  void slot(int64_t layer, int64_t slot, Acc* s, Acc* z, Acc* zt, Acc* dz, Acc* g) const {
    const int64_t dim = a_.dim, rank = a_.rank;
    const Acc* p = proj_.data() + layer * rank * dim;
    load_row(student_.row(layer, slots_.row(slot)), student_.dtype, student_.stride_d(layer), dim, s);
    for (int64_t k = 0; k < rank; ++k) {
      Acc acc = 0;
      const Acc* pk = p + k * dim;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < dim; ++d) acc += pk[d] * s[d];
      z[k] = acc;
    }
    std::fill(dz, dz + rank, Acc(0));
    const Acc scale = layer_scale_ != nullptr ? layer_scale_[layer] : Acc(1);
    for (int64_t j = slots_.begin(slot); j < slots_.end(slot); ++j) {
      const int64_t entry = slots_.entry(j);
      load_row(teacher_z_.row(layer, entry), teacher_z_.dtype, teacher_z_.stride_d(layer), rank, zt);
      const Acc w = a_.weights != 0 ? load_scalar<Acc>(a_.weights, a_.w_dtype, entry) : inv_n_;
      const RowTerms<Acc> terms = row_terms(z, zt, rank, a_.loss_type);
      row_loss_[layer * a_.num_sel + entry] = w * terms.loss;
      add_row_gradient(dz, z, zt, rank, w * scale, terms);
    }
    if (dz_all_ != nullptr) std::copy(dz, dz + rank, dz_all_ + (layer * a_.num_sel + slot) * rank);
    if (g != nullptr) {  // dS = P^T dZ
      std::fill(g, g + dim, Acc(0));
      for (int64_t k = 0; k < rank; ++k) {
        const Acc c = dz[k];
        const Acc* pk = p + k * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) g[d] += c * pk[d];
      }
    }
  }

  int run() const {
    const int64_t dim = a_.dim, rank = a_.rank;
    const GradientRows grads{reinterpret_cast<const int64_t*>(a_.grad_table),
                             reinterpret_cast<const int64_t*>(a_.grad_index), dim * element_size(a_.grad_dtype)};
    struct Scratch {
      std::vector<Acc> s, g, z, zt, dz;
    };
    const auto make_scratch = [dim, rank] {
      return Scratch{std::vector<Acc>(dim), std::vector<Acc>(dim), std::vector<Acc>(rank), std::vector<Acc>(rank),
                     std::vector<Acc>(rank)};
    };
    const int team = sweep(
        a_.num_layers, a_.num_sel, a_.num_rows, slots_, grads, a_.num_threads, make_scratch,
        [&](Scratch& w, int64_t layer, int64_t u, char* out) {
          slot(layer, u, w.s.data(), w.z.data(), w.zt.data(), w.dz.data(), out != nullptr ? w.g.data() : nullptr);
          if (out != nullptr) store_row(out, a_.grad_dtype, dim, w.g.data());
        });
    if (a_.proj_grad != 0) project_gradient();
    sum_rows_per_layer(row_loss_, a_.num_layers, a_.num_sel, reinterpret_cast<Acc*>(a_.per_layer));
    return team;
  }

 private:
  // dP[l] = sum over slots, in slot order, of dZ_u s_u^T: one task per (layer, column block).
  void project_gradient() const {
    const int64_t L = a_.num_layers, n_sel = a_.num_sel, dim = a_.dim, rank = a_.rank;
    Acc* proj_grad = reinterpret_cast<Acc*>(a_.proj_grad);
    const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
    const int64_t s_size = element_size(student_.dtype);
#pragma omp parallel num_threads(a_.num_threads)
    {
      std::vector<Acc> s(kColumnBlock);
#pragma omp for schedule(static)
      for (int64_t task = 0; task < L * blocks; ++task) {
        const int64_t layer = task / blocks, d0 = (task % blocks) * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, dim - d0);
        const int64_t stride_d = student_.stride_d(layer);
        Acc* out = proj_grad + layer * rank * dim + d0;
        for (int64_t k = 0; k < rank; ++k) std::fill(out + k * dim, out + k * dim + width, Acc(0));
        for (int64_t u = 0; u < n_sel; ++u) {
          const int64_t row = slots_.row(u);
          if (row < 0) continue;
          load_row(student_.row(layer, row) + d0 * stride_d * s_size, student_.dtype, stride_d, width, s.data());
          const Acc* dz = dz_all_ + (layer * n_sel + u) * rank;
          for (int64_t k = 0; k < rank; ++k) {
            const Acc c = dz[k];
            Acc* o = out + k * dim;
#pragma omp simd
            for (int64_t d = 0; d < width; ++d) o[d] += c * s[d];
          }
        }
      }
    }
  }

  const BridgeArgs& a_;
  LayerTable student_, teacher_z_;
  Slots slots_;
  const Acc* layer_scale_;
  Acc* row_loss_;
  Acc* dz_all_;
  Acc inv_n_;
  std::vector<Acc> proj_;
};

}  // namespace

int bridge_run(const BridgeArgs& args) {
  return args.fp64 ? Bridge<double>(args).run() : Bridge<float>(args).run();
}

}  // namespace OPRD_ISA
}  // namespace oprd
