"""The reference losses' gradients without autograd (`torch.func.vjp`, which works below autograd): what the custom
ops' backward calls for the reference backend (oprd_kernels/_vjp.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._vjp import tensors_of
from oprd_kernels.reference.alignment import alignment_loss
from oprd_kernels.reference.bridge import bridge_loss


def _states(tensors: tuple[Tensor, ...], stacked: bool):
    return tensors[0] if stacked else list(tensors)


def alignment_vjp(student, teacher, grad: Tensor, *, rows: Tensor | None = None, weights: Tensor | None = None,
                  layer_map: Tensor | None = None, loss_type: str = "mse", reduction: str = "mean") -> list[Tensor]:
    """The student gradients of `alignment_loss(...)` against `grad`."""
    tensors, stacked = tensors_of(student)

    def loss(*s: Tensor) -> Tensor:
        return alignment_loss(_states(s, stacked), teacher, rows=rows, weights=weights, layer_map=layer_map,
                              loss_type=loss_type, reduction=reduction)

    _, pull = torch.func.vjp(loss, *(t.detach() for t in tensors))
    return list(pull(grad))


def bridge_vjp(student, teacher_z, proj: Tensor, grad: Tensor, *, rows: Tensor | None = None,
               weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
               proj_grad: bool = False) -> tuple[Tensor | None, list[Tensor]]:
    """(d proj or None, the student gradients) of `bridge_loss(...)` against `grad`."""
    tensors, stacked = tensors_of(student)
    fixed = proj.detach()

    def loss(p: Tensor, *s: Tensor) -> Tensor:
        return bridge_loss(_states(s, stacked), teacher_z, p if proj_grad else fixed, rows=rows, weights=weights,
                           loss_type=loss_type, reduction=reduction)

    _, pull = torch.func.vjp(loss, fixed, *(t.detach() for t in tensors))
    d_proj, *d_student = pull(grad)
    return (d_proj if proj_grad else None), d_student
