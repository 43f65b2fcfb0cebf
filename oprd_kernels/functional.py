"""Public entry points: choose the backend (oprd_kernels/registry.py, family `oprd`), run. Semantics are those of
oprd_kernels.reference (see DESIGN.md); the backend changes speed and memory, never the meaning."""

from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor

from oprd_kernels._validation import device_of
from oprd_kernels.registry import resolve

HiddenStates = Union[Tensor, Sequence[Tensor]]


def alignment_loss(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                   weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                   reduction: str = "mean", backend: str | None = None) -> Tensor:
    """Multi-layer OPRD alignment loss; see oprd_kernels.reference.alignment_loss for the arguments.

    backend: "reference", "triton", "cpu" or "auto" (default: $OPRD_BACKEND, else auto by device; see
    oprd_kernels/registry.py).
    """
    _, impl = resolve("oprd", "alignment_loss", backend, device_of(student))
    return impl(student, teacher, rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type,
                reduction=reduction)


def bridge_loss(student: HiddenStates, teacher_z: HiddenStates, proj: Tensor, *, rows: Tensor | None = None,
                weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
                backend: str | None = None) -> Tensor:
    """OPRD-Bridge projected loss; see oprd_kernels.reference.bridge_loss for the arguments.

    backend: "reference", "triton", "cpu" or "auto" (default: $OPRD_BACKEND, else auto by device; see
    oprd_kernels/registry.py).
    """
    _, impl = resolve("oprd", "bridge_loss", backend, device_of(student))
    return impl(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type, reduction=reduction)
