"""Public entry points: choose the backend (oprd_kernels/registry.py, family `oprd`), run. Semantics are those of
oprd_kernels.reference (see DESIGN.md); the backend changes speed and memory, never the meaning. Inside
`torch.compile` they call the same code as `torch.library` custom ops (oprd_kernels/custom_ops.py), so a compiled
graph traces through them without a break."""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels.custom_ops import traced_alignment_loss, traced_bridge_loss
from oprd_kernels.eager import HiddenStates, eager_alignment_loss, eager_bridge_loss


def alignment_loss(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                   weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                   reduction: str = "mean", backend: str | None = None) -> Tensor:
    """Multi-layer OPRD alignment loss; see oprd_kernels.reference.alignment_loss for the arguments.

    backend: "reference", "triton", "cpu" or "auto" (default: $OPRD_BACKEND, else auto by device; see
    oprd_kernels/registry.py).
    """
    if torch.compiler.is_compiling():
        return traced_alignment_loss(student, teacher, rows=rows, weights=weights, layer_map=layer_map,
                                     loss_type=loss_type, reduction=reduction, backend=backend)
    return eager_alignment_loss(student, teacher, rows=rows, weights=weights, layer_map=layer_map,
                                loss_type=loss_type, reduction=reduction, backend=backend)


def bridge_loss(student: HiddenStates, teacher_z: HiddenStates, proj: Tensor, *, rows: Tensor | None = None,
                weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
                backend: str | None = None) -> Tensor:
    """OPRD-Bridge projected loss; see oprd_kernels.reference.bridge_loss for the arguments.

    backend: "reference", "triton", "cpu" or "auto" (default: $OPRD_BACKEND, else auto by device; see
    oprd_kernels/registry.py).
    """
    if torch.compiler.is_compiling():
        return traced_bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                                  reduction=reduction, backend=backend)
    return eager_bridge_loss(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type,
                             reduction=reduction, backend=backend)
