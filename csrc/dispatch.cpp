#include "kernels.h"

#include <cstdlib>
#include <cstring>

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
void alignment_run(const AlignmentArgs& args) { isa_base::alignment_run(args); }
void bridge_run(const BridgeArgs& args) { isa_base::bridge_run(args); }
}  // namespace isa_avx2
#endif

void alignment_run(const AlignmentArgs& args) {
  if (use_avx2()) {
    isa_avx2::alignment_run(args);
  } else {
    isa_base::alignment_run(args);
  }
}

void bridge_run(const BridgeArgs& args) {
  if (use_avx2()) {
    isa_avx2::bridge_run(args);
  } else {
    isa_base::bridge_run(args);
  }
}

std::string kernel_isa() { return use_avx2() ? "avx2" : "base"; }

}  // namespace oprd
