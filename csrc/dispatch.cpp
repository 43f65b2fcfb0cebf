#include "kernels.h"

#include <cstdlib>
#include <cstring>

#include "guards.h"

namespace oprd {
namespace {

// AVX2+FMA when this build has that variant and the processor supports it, unless OPRD_CPU_ISA=base asks for the
// baseline (for tests and comparisons). Decided once per process.
bool use_avx2() {
#if defined(OPRD_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
  static const bool chosen = [] {
    const char* forced = std::getenv("OPRD_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "base") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return chosen;
#else
  return false;
#endif
}

}  // namespace

#ifndef OPRD_HAVE_AVX2
// Built without the AVX2 variant: its entry points exist but are never chosen.
namespace isa_avx2 {
int alignment_run(const AlignmentArgs& args) { return isa_base::alignment_run(args); }
int bridge_run(const BridgeArgs& args) { return isa_base::bridge_run(args); }
}  // namespace isa_avx2
#endif

int alignment_run(const AlignmentArgs& args) {
  check_args(args);
  AlignmentArgs run = args;  // a copy: the caller's struct keeps num_threads as it set it
  run.num_threads = resolve_threads(args.num_threads);
  return use_avx2() ? isa_avx2::alignment_run(run) : isa_base::alignment_run(run);
}

int bridge_run(const BridgeArgs& args) {
  check_args(args);
  BridgeArgs run = args;
  run.num_threads = resolve_threads(args.num_threads);
  return use_avx2() ? isa_avx2::bridge_run(run) : isa_base::bridge_run(run);
}

std::string kernel_isa() { return use_avx2() ? "avx2" : "base"; }

}  // namespace oprd
