#include "bridge.h"

#include <algorithm>
#include <vector>

#include "row_terms.h"
#include "rows.h"
#include "scalars.h"

namespace oprd {
namespace {

constexpr int64_t kColumnBlock = 256;  // columns of the projector gradient per task

template <typename Acc>
void run(const BridgeArgs& a) {
  const LayerTable student{reinterpret_cast<const char*>(a.s_base), reinterpret_cast<const int64_t*>(a.s_table),
                           a.s_seq, a.s_dtype};
  const LayerTable teacher_z{reinterpret_cast<const char*>(a.z_base), reinterpret_cast<const int64_t*>(a.z_table),
                             a.z_seq, a.z_dtype};
  const Slots slots{reinterpret_cast<const int64_t*>(a.order), reinterpret_cast<const int64_t*>(a.slot_rows),
                    reinterpret_cast<const int64_t*>(a.slot_start)};
  const int64_t* grad_index = reinterpret_cast<const int64_t*>(a.grad_index);
  const Acc* layer_scale = reinterpret_cast<const Acc*>(a.layer_scale);
  Acc* row_loss = reinterpret_cast<Acc*>(a.row_loss);
  Acc* dz_all = reinterpret_cast<Acc*>(a.dz);
  char* grad = reinterpret_cast<char*>(a.grad);
  const int64_t L = a.num_layers, n_sel = a.num_sel, dim = a.dim, rank = a.rank;
  const int64_t grad_row_bytes = dim * element_size(a.grad_dtype);
  const int64_t p_size = element_size(a.p_dtype);
  const Acc inv_n = Acc(1) / static_cast<Acc>(std::max<int64_t>(n_sel, 1));

  // The projectors in Acc, contiguous [L, r, D]: read once per row from cache instead of converted per row.
  std::vector<Acc> proj(static_cast<size_t>(L * rank * dim));
#pragma omp parallel for schedule(static)
  for (int64_t lk = 0; lk < L * rank; ++lk) {
    const int64_t l = lk / rank, k = lk % rank;
    const char* src = reinterpret_cast<const char*>(a.proj) + (l * a.p_stride_l + k * a.p_stride_r) * p_size;
    load_row(src, a.p_dtype, a.p_stride_d, dim, proj.data() + lk * dim);
  }

#pragma omp parallel
  {
    std::vector<Acc> s(dim), g(dim), z(rank), zt(rank), dz(rank);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < L * n_sel; ++task) {
      const int64_t layer = task / n_sel, slot = task % n_sel;
      const int64_t row = slots.row(slot);
      Acc* dz_out = dz_all != nullptr ? dz_all + task * rank : nullptr;
      if (row < 0) {
        if (dz_out != nullptr) std::fill(dz_out, dz_out + rank, Acc(0));
        continue;
      }
      const Acc* p = proj.data() + layer * rank * dim;
      load_row(student.row(layer, row), student.dtype, student.stride_d(layer), dim, s.data());
      for (int64_t k = 0; k < rank; ++k) {
        Acc acc = 0;
        const Acc* pk = p + k * dim;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < dim; ++d) acc += pk[d] * s[d];
        z[k] = acc;
      }
      std::fill(dz.begin(), dz.end(), Acc(0));
      const Acc scale = layer_scale != nullptr ? layer_scale[layer] : Acc(1);
      for (int64_t j = slots.begin(slot); j < slots.end(slot); ++j) {
        const int64_t entry = slots.entry(j);
        load_row(teacher_z.row(layer, entry), teacher_z.dtype, teacher_z.stride_d(layer), rank, zt.data());
        const Acc w = a.weights != 0 ? load_scalar<Acc>(a.weights, a.w_dtype, entry) : inv_n;
        const RowTerms<Acc> terms = row_terms(z.data(), zt.data(), rank, a.loss_type);
        row_loss[layer * n_sel + entry] = w * terms.loss;
        add_row_gradient(dz.data(), z.data(), zt.data(), rank, w * scale, terms);
      }
      if (dz_out != nullptr) std::copy(dz.begin(), dz.end(), dz_out);
      const int64_t slice = grad != nullptr ? grad_index[layer] : -1;
      if (slice >= 0) {  // dS = P^T dZ
        std::fill(g.begin(), g.end(), Acc(0));
        for (int64_t k = 0; k < rank; ++k) {
          const Acc c = dz[k];
          const Acc* pk = p + k * dim;
#pragma omp simd
          for (int64_t d = 0; d < dim; ++d) g[d] += c * pk[d];
        }
        store_row(grad + (slice * a.num_rows + row) * grad_row_bytes, a.grad_dtype, dim, g.data());
      }
    }
  }

  if (a.proj_grad != 0) {  // dP[l] = sum over slots of dZ_u s_u^T, in slot order
    Acc* proj_grad = reinterpret_cast<Acc*>(a.proj_grad);
    const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel
    {
      std::vector<Acc> s(kColumnBlock);
#pragma omp for schedule(static)
      for (int64_t task = 0; task < L * blocks; ++task) {
        const int64_t layer = task / blocks, d0 = (task % blocks) * kColumnBlock;
        const int64_t width = std::min(kColumnBlock, dim - d0);
        Acc* out = proj_grad + layer * rank * dim + d0;
        for (int64_t k = 0; k < rank; ++k) std::fill(out + k * dim, out + k * dim + width, Acc(0));
        const int64_t stride_d = student.stride_d(layer);
        const int64_t s_size = element_size(student.dtype);
        for (int64_t slot = 0; slot < n_sel; ++slot) {
          const int64_t row = slots.row(slot);
          if (row < 0) continue;
          load_row(student.row(layer, row) + d0 * stride_d * s_size, student.dtype, stride_d, width, s.data());
          const Acc* dz = dz_all + (layer * n_sel + slot) * rank;
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
  sum_rows_per_layer(row_loss, L, n_sel, reinterpret_cast<Acc*>(a.per_layer));
}

}  // namespace

void bridge_run(const BridgeArgs& args) {
  if (args.fp64) {
    run<double>(args);
  } else {
    run<float>(args);
  }
}

}  // namespace oprd
