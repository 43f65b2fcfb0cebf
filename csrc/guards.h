// Checks of the argument structs at the C++ entry points, before any thread starts: what the Python wrappers
// (oprd_kernels/cpu_ops/) guarantee, verified again so that a caller filling the structs itself (another trainer
// calling oprd_kernels._C directly) gets a ValueError naming the field, not a crash. Each check is O(L + N_sel +
// B*S) reads of the small index arrays; the tensors themselves are never touched, so their sizes are the caller's
// promise (the structs carry addresses, not extents).
#pragma once

#include "alignment_args.h"
#include "bridge_args.h"

namespace oprd {

// Throw std::invalid_argument (ValueError in Python) "<Struct>.<field> = <seen>; expected <what>" on the first
// field that is null where required, negative, out of range or inconsistent with the others.
void check_args(const AlignmentArgs& args);
void check_args(const BridgeArgs& args);

// The team size a call runs with: `requested` (the caller's torch.get_num_threads()), or the OpenMP runtime's
// default for the calling thread when it is 0. 1 when built without OpenMP.
int resolve_threads(int requested);

}  // namespace oprd
