"""Whether a module is an FSDP2 module, importable on every torch this project supports (FSDP2's public
`torch.distributed.fsdp.FSDPModule` arrived after its oldest)."""

from __future__ import annotations

from torch import nn

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # an older torch: nothing is an FSDP2 module there
    FSDPModule = None


def is_fsdp_module(module: nn.Module) -> bool:
    """Whether `module` is an FSDP2 module (its parameters DTensor shards, gathered by its forward hooks)."""
    return FSDPModule is not None and isinstance(module, FSDPModule)
