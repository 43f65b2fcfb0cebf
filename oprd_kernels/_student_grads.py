"""Bookkeeping shared by the backward passes: which student layers want a gradient, the dense gradient buffer the
kernels write into, and handing its slices back to autograd in the shapes the inputs had."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from oprd_kernels._tables import RowSlots, row_slots


def student_layers(stacked: bool, tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The per-layer tensors of a student passed to a Function as one stacked [L, N, D] tensor or as L tensors."""
    return tuple(tensors[0].unbind(0)) if stacked else tuple(tensors)


def wanted_layers(stacked: bool, needs: Sequence[bool], num_layers: int) -> list[int]:
    """Indices of the layers whose gradient autograd asks for (a stacked student is one input: all or none)."""
    if stacked:
        return list(range(num_layers)) if needs[0] else []
    return [i for i, n in enumerate(needs) if n]


@dataclass
class DenseGradients:
    """The dense gradients the kernels write: one [B*S, D] tensor per wanted layer, allocated separately so that
    autograd can free each as soon as backprop has used it (one [L, B*S, D] block would live until the last layer's
    gradient is consumed). A stacked [L, N, D] student gets one block, since autograd wants one gradient for it.

    offsets: int64 [L_g] on the device, element offsets of each tensor from tensors[0] (the kernels' base pointer);
    align: the largest of 8, 4, 2, 1 elements dividing every row start (lets GPU stores vectorise)."""

    tensors: list[Tensor]
    offsets: Tensor
    align: int
    whole: Tensor | None = None

    def base(self, fallback: Tensor) -> Tensor:
        """The kernels' base pointer: the first gradient, or any tensor when no layer wants one (never written)."""
        return self.tensors[0] if self.tensors else fallback


def dense_gradients(num_wanted: int, num_rows: int, dim: int, like: Tensor, rows: Tensor | None, *,
                    stacked: bool = False, kernel_writes_every_row: bool = False) -> DenseGradients:
    """Per-layer [B*S, D] gradients in the student's dtype. Left uninitialised when the kernel writes every row (no
    `rows`, or a kernel that zeroes the unselected rows itself); zero-filled otherwise (unselected rows get 0)."""
    zero = (rows is not None or num_rows == 0) and not kernel_writes_every_row
    make = torch.zeros if zero else torch.empty
    if stacked:
        whole = make((num_wanted, num_rows, dim), dtype=like.dtype, device=like.device)
        tensors = list(whole.unbind(0))
    else:
        whole = None
        tensors = [make((num_rows, dim), dtype=like.dtype, device=like.device) for _ in range(num_wanted)]
    size = like.element_size()
    starts = [(t.data_ptr() - tensors[0].data_ptr()) // size for t in tensors] if tensors else []
    align = 8
    while align > 1 and any(s % align or (t.data_ptr() % (align * size)) or dim % align
                            for s, t in zip(starts, tensors)):
        align //= 2
    offsets = torch.tensor(starts or [0], dtype=torch.int64).to(like.device, non_blocking=True)
    return DenseGradients(tensors, offsets, align, whole)


def slot_arrays(rows: Tensor | None) -> RowSlots:
    """tables.row_slots of `rows`, or RowSlots of three Nones without them (every student row is its own slot)."""
    if rows is None or rows.numel() == 0:
        return RowSlots(None, None, None)
    return row_slots(rows)


def as_input_gradients(grads: DenseGradients, stacked: bool, student: Sequence[Tensor],
                       needs: Sequence[bool]) -> list:
    """The gradients as autograd expects them: one per student input, None where none was asked for."""
    if stacked:
        return [grads.whole.view_as(student[0]) if needs[0] else None]
    layers = iter(grads.tensors)
    return [next(layers).view(t.shape) if n else None for t, n in zip(student, needs)]
