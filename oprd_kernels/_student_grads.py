"""Bookkeeping shared by the backward passes: which student layers want a gradient, the dense gradient buffer the
kernels write into, and handing its slices back to autograd in the shapes the inputs had."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from oprd_kernels._tables import row_slots


def student_layers(stacked: bool, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The per-layer tensors of a student passed to a Function as one stacked [L, N, D] tensor or as L tensors."""
    return tuple(tensors[0].unbind(0)) if stacked else tuple(tensors)


def wanted_layers(stacked: bool, needs: Sequence[bool], num_layers: int) -> list[int]:
    """Indices of the layers whose gradient autograd asks for (a stacked student is one input: all or none)."""
    if stacked:
        return list(range(num_layers)) if needs[0] else []
    return [i for i, n in enumerate(needs) if n]


def dense_gradient(num_wanted: int, num_rows: int, dim: int, like: Tensor, rows: Tensor | None,
                   kernel_writes_every_row: bool = False) -> Tensor:
    """[L_g, B*S, D] in the student's dtype. Left uninitialised when the kernel writes every row (no `rows`, or a
    kernel that zeroes the unselected rows itself); zero-filled otherwise, since unselected rows have gradient 0."""
    shape = (num_wanted, num_rows, dim)
    if (rows is not None or num_rows == 0) and not kernel_writes_every_row:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def slot_arrays(rows: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(order, slot_rows, slot_start) of tables.row_slots, or three Nones without `rows`."""
    if rows is None or rows.numel() == 0:
        return None, None, None
    slots = row_slots(rows)
    return slots.order, slots.slot_rows, slots.slot_start


def as_input_gradients(grad: Tensor, stacked: bool, student: Sequence[Tensor], needs: Sequence[bool]) -> list:
    """The slices of `grad` as autograd expects them: one per student input, None where none was asked for."""
    if stacked:
        return [grad.view_as(student[0]) if needs[0] else None]
    layers = iter(grad.unbind(0))
    return [next(layers).view(t.shape) if n else None for t, n in zip(student, needs)]
