// The CPU kernels, compiled once per instruction set (csrc/kernels/ is built twice on x86-64: baseline SSE2 and
// AVX2+FMA, each in its own namespace so no inline function of one can leak into the other), and the dispatchers
// that pick one at run time from what the processor supports.
#pragma once

#include <string>

#include "alignment_args.h"
#include "bridge_args.h"

namespace oprd {

// The per-ISA kernels trust their arguments (checked, and num_threads resolved to >= 1, by the dispatchers) and
// return the OpenMP team size they ran with.
namespace isa_base {
int alignment_run(const AlignmentArgs& args);
int bridge_run(const BridgeArgs& args);
}  // namespace isa_base

namespace isa_avx2 {
int alignment_run(const AlignmentArgs& args);
int bridge_run(const BridgeArgs& args);
}  // namespace isa_avx2

// Loss and, when args.grad_table is set, the gradient. Parallel with OpenMP over (layer, row) on args.num_threads
// threads; every result is independent of the thread count (per-row values are summed in a fixed order afterwards).
// Checks args first (csrc/guards.h: std::invalid_argument naming the field); returns the team size it ran with.
int alignment_run(const AlignmentArgs& args);

// Loss and, when asked, the gradients. Z = P_S h lives in a few registers per row; the projector gradient is
// summed over rows in slot order by one task per (layer, column block): the same bits for any thread count.
// Checks and returns as alignment_run.
int bridge_run(const BridgeArgs& args);

// "avx2" or "base": the variant the dispatchers run on this processor.
std::string kernel_isa();

}  // namespace oprd
