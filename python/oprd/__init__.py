"""oprd: a minimal on-policy trainer for On-Policy Representation Distillation around oprd_kernels.

One folder per job, each importing only the folders below it:

    cli/           the `oprd` command                     demo/      `oprd demo`, a recipe on the library
    train/         the step loop, config, evaluation      integrations/   TRL and verl
    objective/     passes, loss terms, the method table   bridge/    OPRD-Bridge: collect, fit, bridge files
    rollout/       rollout engines, prompts               capture/   hidden states out of HF decoders
    parallel/      several processes (torchrun, FSDP2)    runs/      checkpoints, metrics, run directories
    layers.py, positions.py, injection.py: which layers and positions are distilled, gradient injection;
    tasks/: the synthetic task and tokenizers the demo, the examples and the tests use.

Old module paths (`oprd.trainer`, `oprd.config`, ...) still import for one release, with a DeprecationWarning
naming the new one (`oprd._moved`).
"""

from oprd import _moved
from oprd.layers import hidden_state_pairs, proportional_map, resolve_layers
from oprd.positions import select_positions

_moved.install()

__version__ = "0.1.0"
__all__ = ["hidden_state_pairs", "proportional_map", "resolve_layers", "select_positions"]
