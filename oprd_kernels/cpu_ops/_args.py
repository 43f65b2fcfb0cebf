"""Filling the C++ argument structs (csrc/alignment_args.h, csrc/bridge_args.h) from tensors: addresses, sizes,
dtype codes and the thread count. The C++ entry points check every field again (csrc/guards.cpp)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from oprd_kernels._student_grads import DenseGradients
from oprd_kernels._tables import LayerTable, RowSlots

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def address(t: Tensor | None) -> int:
    """Data address of a tensor the kernels read as a plain array (so it must be contiguous), or 0 when absent."""
    if t is None:
        return 0
    if not t.is_contiguous():
        raise ValueError("internal: the C++ kernels index this array contiguously")
    return t.data_ptr()


def set_threads(args) -> None:
    """`num_threads` = torch.get_num_threads(), read on every call: `torch.set_num_threads(1)` makes the C++
    kernels single-threaded too, whichever OpenMP runtime instance they run on (docs/kernels.md)."""
    args.num_threads = torch.get_num_threads()


def set_table(args, prefix: str, table: LayerTable) -> None:
    """The `<prefix>_base/_table/_seq/_dtype` fields from a layer table (the layer count is set by the caller: only
    the teacher tables have a `<prefix>_layers` field)."""
    setattr(args, f"{prefix}_base", table.base.data_ptr())
    setattr(args, f"{prefix}_table", address(table.table))
    setattr(args, f"{prefix}_seq", table.seq_len)
    setattr(args, f"{prefix}_dtype", DTYPE_CODES[table.base.dtype])


def set_slots(args, slots: RowSlots) -> None:
    args.order, args.slot_rows, args.slot_start = (address(slots.order), address(slots.slot_rows),
                                                   address(slots.slot_start))


def set_gradients(args, grads: DenseGradients, wanted: Sequence[int], num_layers: int) -> tuple[Tensor, Tensor]:
    """The `grad_table`, `grad_count`, `grad_dtype`, `grad_index` fields; returns the two index tensors, to keep them
    alive."""
    table = torch.tensor([t.data_ptr() for t in grads.tensors], dtype=torch.int64)
    args.grad_count = len(grads.tensors)
    index = torch.full((num_layers,), -1, dtype=torch.int64)
    index[list(wanted)] = torch.arange(len(wanted))
    args.grad_table, args.grad_dtype, args.grad_index = address(table), DTYPE_CODES[grads.tensors[0].dtype], \
        address(index)
    return table, index


def set_weights(args, weights: Tensor | None) -> Tensor | None:
    """Weights as a contiguous vector (a small copy only for a strided [N_sel] view); returned to keep it alive."""
    if weights is not None:
        weights = weights.contiguous()
        args.w_dtype = DTYPE_CODES[weights.dtype]
    args.weights = address(weights)
    return weights
