"""The `oprd` family's calls outside compilation: the backend chosen in Python (oprd_kernels/registry.py), then run.
The public functions (functional.py) call these eagerly; the custom ops (custom_ops.py) run them as their bodies."""

from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor

from oprd_kernels._validation import device_of
from oprd_kernels.registry import resolve

HiddenStates = Union[Tensor, Sequence[Tensor]]


def eager_alignment_loss(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                         weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                         reduction: str = "mean", backend: str | None = None) -> Tensor:
    """`alignment_loss` outside compilation: the backend chosen in Python, then run (the custom op's body)."""
    _, impl = resolve("oprd", "alignment_loss", backend, device_of(student))
    return impl(student, teacher, rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type,
                reduction=reduction)


def eager_bridge_loss(student: HiddenStates, teacher_z: HiddenStates, proj: Tensor, *, rows: Tensor | None = None,
                      weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
                      backend: str | None = None) -> Tensor:
    """`bridge_loss` outside compilation: the backend chosen in Python, then run (the custom op's body)."""
    _, impl = resolve("oprd", "bridge_loss", backend, device_of(student))
    return impl(student, teacher_z, proj, rows=rows, weights=weights, loss_type=loss_type, reduction=reduction)
