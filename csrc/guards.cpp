#include "guards.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace oprd {
namespace {

constexpr int kNumDtypes = 4;     // csrc/kernels/rows.h Dtype: float32, bfloat16, float16, float64
constexpr int kNumLossTypes = 3;  // csrc/kernels/row_terms.h LossType: mse, nmse, cosine

const char* const kDtypeNames = "0 (float32), 1 (bfloat16), 2 (float16) or 3 (float64)";

// Names the struct in every message: "AlignmentArgs.s_seq = 0; expected >= 1 (rows per sample)".
class Checker {
 public:
  explicit Checker(const char* name) : name_(name) {}

  [[noreturn]] void fail(const std::string& field, const std::string& seen, const std::string& expected) const {
    throw std::invalid_argument(std::string(name_) + "." + field + " = " + seen + "; expected " + expected);
  }

  void address(const char* field, uintptr_t value, const char* what) const {
    if (value == 0) fail(field, "0 (null)", std::string("the address of ") + what);
  }
  void at_least(const char* field, int64_t value, int64_t low, const char* what) const {
    if (value < low) fail(field, std::to_string(value), ">= " + std::to_string(low) + " (" + what + ")");
  }
  void code(const char* field, int value, int count, const char* names) const {
    if (value < 0 || value >= count) fail(field, std::to_string(value), std::string("one of ") + names);
  }
  void dtype(const char* field, int value) const { code(field, value, kNumDtypes, kDtypeNames); }

  // The row-slot arrays (oprd_kernels/_tables.py row_slots), all three or none. With them: `order` is a
  // permutation of [0, N_sel); `slot_start` [N_sel + 1] runs from 0 to N_sel without decreasing, so the slots'
  // runs partition the entries; `slot_rows` [N_sel] holds student rows in [0, num_rows), each in one slot, or -1
  // for a slot with an empty run. Without them, entry u reads student row u, so N_sel must be num_rows.
  void slots(uintptr_t order_addr, uintptr_t rows_addr, uintptr_t start_addr, int64_t num_sel,
             int64_t num_rows) const {
    const int present = (order_addr != 0) + (rows_addr != 0) + (start_addr != 0);
    if (present == 0) {
      if (num_sel != num_rows) {
        fail("num_sel", std::to_string(num_sel),
             "num_rows = " + std::to_string(num_rows) + " when order/slot_rows/slot_start are 0 (all rows)");
      }
      return;
    }
    if (present != 3) {
      const char* missing = order_addr == 0 ? "order" : rows_addr == 0 ? "slot_rows" : "slot_start";
      fail(missing, "0 (null)", "an address: order, slot_rows and slot_start are given together or all 0");
    }
    const auto* order = reinterpret_cast<const int64_t*>(order_addr);
    const auto* slot_rows = reinterpret_cast<const int64_t*>(rows_addr);
    const auto* slot_start = reinterpret_cast<const int64_t*>(start_addr);
    std::vector<char> seen(static_cast<size_t>(num_sel), 0);
    for (int64_t j = 0; j < num_sel; ++j) {
      const int64_t e = order[j];
      if (e < 0 || e >= num_sel) {
        fail("order[" + std::to_string(j) + "]", std::to_string(e), "an entry in [0, num_sel = " +
             std::to_string(num_sel) + ")");
      }
      if (seen[e]) fail("order[" + std::to_string(j) + "]", std::to_string(e), "each entry once (a permutation)");
      seen[e] = 1;
    }
    if (slot_start[0] != 0) fail("slot_start[0]", std::to_string(slot_start[0]), "0");
    if (slot_start[num_sel] != num_sel) {
      fail("slot_start[" + std::to_string(num_sel) + "]", std::to_string(slot_start[num_sel]),
           "num_sel = " + std::to_string(num_sel));
    }
    std::vector<char> row_used(static_cast<size_t>(num_rows), 0);
    for (int64_t u = 0; u < num_sel; ++u) {
      const std::string at = "[" + std::to_string(u) + "]";
      const int64_t begin = slot_start[u], end = slot_start[u + 1];
      if (end < begin || end > num_sel) {
        fail("slot_start[" + std::to_string(u + 1) + "]", std::to_string(end),
             "a value in [slot_start" + at + " = " + std::to_string(begin) + ", num_sel = " +
                 std::to_string(num_sel) + "]");
      }
      const int64_t row = slot_rows[u];
      if (row < -1 || row >= num_rows) {
        fail("slot_rows" + at, std::to_string(row), "a student row in [0, num_rows = " + std::to_string(num_rows) +
             ") (B*S), or -1 for an unused slot");
      }
      if (row == -1 && end != begin) {
        fail("slot_rows" + at, "-1", "a student row: the slot owns " + std::to_string(end - begin) + " entries");
      }
      if (row >= 0) {
        if (row_used[row]) fail("slot_rows" + at, std::to_string(row), "each student row in one slot only");
        row_used[row] = 1;
      }
    }
  }

  // grad_table (int64 [grad_count] addresses) and grad_index (int64 [num_layers] entries of it, -1 for none).
  void gradients(uintptr_t table_addr, uintptr_t index_addr, int64_t grad_count, int grad_dtype,
                 int64_t num_layers) const {
    if (table_addr == 0) return;
    address("grad_index", index_addr, "int64 [num_layers] entries of grad_table (-1: no gradient) with grad_table");
    at_least("grad_count", grad_count, 1, "the length of grad_table, given with grad_table");
    dtype("grad_dtype", grad_dtype);
    const auto* table = reinterpret_cast<const int64_t*>(table_addr);
    const auto* index = reinterpret_cast<const int64_t*>(index_addr);
    for (int64_t g = 0; g < grad_count; ++g) {
      if (table[g] == 0) fail("grad_table[" + std::to_string(g) + "]", "0 (null)", "the address of a gradient");
    }
    std::vector<char> used(static_cast<size_t>(grad_count), 0);
    for (int64_t l = 0; l < num_layers; ++l) {
      const int64_t g = index[l];
      const std::string field = "grad_index[" + std::to_string(l) + "]";
      if (g < -1 || g >= grad_count) {
        fail(field, std::to_string(g), "-1 or an entry of grad_table in [0, grad_count = " +
             std::to_string(grad_count) + ")");
      }
      if (g >= 0) {
        if (used[g]) fail(field, std::to_string(g), "each gradient written by one layer only");
        used[g] = 1;
      }
    }
  }

  void threads(int num_threads) const { at_least("num_threads", num_threads, 0, "0: the OpenMP default"); }

 private:
  const char* name_;
};

// The fields AlignmentArgs and BridgeArgs share: sizes, the student table, weights, loss, outputs, threads, row slots
// and gradients.
template <class Args>
void check_student_side(const Checker& c, const Args& a, const char* dim_meaning) {
  c.at_least("num_layers", a.num_layers, 1, "student layers");
  c.at_least("num_rows", a.num_rows, 0, "student rows B*S");
  c.at_least("num_sel", a.num_sel, 0, "selected rows");
  c.at_least("dim", a.dim, 1, dim_meaning);
  c.address("s_base", a.s_base, "the student's first layer");
  c.address("s_table", a.s_table, "the student layer table, int64 [num_layers, 4]");
  c.at_least("s_seq", a.s_seq, 1, "rows per student sample, S");
  c.dtype("s_dtype", a.s_dtype);
  if (a.weights != 0) c.dtype("w_dtype", a.w_dtype);
  c.code("loss_type", a.loss_type, kNumLossTypes, "0 (mse), 1 (nmse) or 2 (cosine)");
  c.address("row_loss", a.row_loss, "the output row losses [num_layers, num_sel]");
  c.address("per_layer", a.per_layer, "the output per-layer losses [num_layers]");
  c.threads(a.num_threads);
  c.slots(a.order, a.slot_rows, a.slot_start, a.num_sel, a.num_rows);
  c.gradients(a.grad_table, a.grad_index, a.grad_count, a.grad_dtype, a.num_layers);
}

}  // namespace

void check_args(const AlignmentArgs& a) {
  const Checker c("AlignmentArgs");
  check_student_side(c, a, "hidden size D");
  c.at_least("t_layers", a.t_layers, 1, "layers in the teacher table t_table");
  c.address("t_base", a.t_base, "the teacher cache's first layer");
  c.address("t_table", a.t_table, "the teacher layer table, int64 [t_layers, 4]");
  c.at_least("t_seq", a.t_seq, 1, "rows per teacher layer, N_sel");
  c.dtype("t_dtype", a.t_dtype);
  if (a.layer_map != 0) {
    const auto* map = reinterpret_cast<const int64_t*>(a.layer_map);
    for (int64_t l = 0; l < a.num_layers; ++l) {
      if (map[l] < 0 || map[l] >= a.t_layers) {
        c.fail("layer_map[" + std::to_string(l) + "]", std::to_string(map[l]),
               "a teacher layer in [0, t_layers = " + std::to_string(a.t_layers) + ")");
      }
    }
  } else if (a.t_layers < a.num_layers) {
    c.fail("t_layers", std::to_string(a.t_layers),
           ">= num_layers = " + std::to_string(a.num_layers) + " without layer_map (identity)");
  }
}

void check_args(const BridgeArgs& a) {
  const Checker c("BridgeArgs");
  check_student_side(c, a, "student hidden size D");
  c.at_least("rank", a.rank, 1, "projection rank r");
  c.address("z_base", a.z_base, "teacher_z's first layer");
  c.address("z_table", a.z_table, "the teacher_z layer table, int64 [z_layers, 4]");
  if (a.z_layers != a.num_layers) {
    c.fail("z_layers", std::to_string(a.z_layers), "num_layers = " + std::to_string(a.num_layers) +
           " (teacher_z has one layer per student layer)");
  }
  c.at_least("z_seq", a.z_seq, 1, "rows per teacher_z layer, N_sel");
  c.dtype("z_dtype", a.z_dtype);
  c.address("proj", a.proj, "the projectors [num_layers, rank, dim]");
  c.dtype("p_dtype", a.p_dtype);
  if (a.proj_grad != 0) c.address("dz", a.dz, "the scratch [num_layers, num_sel, rank], required with proj_grad");
}

int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

}  // namespace oprd
