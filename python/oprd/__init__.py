"""oprd: a minimal on-policy trainer for On-Policy Representation Distillation around oprd_kernels.

This release holds the selection helpers (which layers, `oprd.layers`, and which response positions,
`oprd.positions`, are distilled), hidden-state capture from HF decoders (`oprd.capture`) and gradient injection
(`oprd.injection`). Rollouts, the trainer and the CLI come next.
"""

from oprd.layers import hidden_state_pairs, proportional_map, resolve_layers
from oprd.positions import select_positions

__version__ = "0.1.0"
__all__ = ["hidden_state_pairs", "proportional_map", "resolve_layers", "select_positions"]
