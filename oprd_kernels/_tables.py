"""Host-side descriptions that let one kernel launch read many separately allocated tensors in place.

A *layer table* turns L tensors (HF `hidden_states` entries, views with any strides) into one base tensor plus an
int64 [L, 4] table of (element offset from the base, stride_b, stride_s, stride_d): the kernel addresses row n of
layer l at base + offset_l + (n // S) * stride_b + (n % S) * stride_s. Nothing is stacked or copied.

The table owns every tensor it describes (`tensors`): a kernel reads layers 1..L-1 through offsets from `base`, so
whatever keeps the table (a saved Plan, through to the backward) must keep all of them alive, not only the first.
It also records their version counters, so that a backward can refuse a cache modified in place since the forward.

*Row slots* make the backward deterministic and atomic-free when `rows` repeats a student row: entries are sorted by
student row (stably), each distinct row gets one slot, and the program of a slot sums its run of entries before it
writes the row's gradient once. Built with device ops only: no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerTable:
    base: Tensor  # one of the layer tensors: the kernel's base pointer and element type
    tensors: tuple[Tensor, ...]  # every tensor the table addresses: held so that none is freed while it is read
    versions: tuple[int, ...]  # their version counters when the table was built
    table: Tensor  # int64 [L, 4] on the device: offset from base (elements), stride_b, stride_s, stride_d
    seq_len: int  # S: rows per sample, to split a flat row index n into (n // S, n % S)
    unit_stride_d: bool  # every layer has stride_d == 1 (contiguous rows)
    align: int  # every row starts on a 16-byte boundary: this many elements (lets loads vectorise); else 1

    def check_unchanged(self, func: str, arg: str) -> None:
        """Raise if a described tensor was modified in place since the table was built (the backward would read
        values the forward never saw), as autograd does for saved tensors."""
        for i, (t, v) in enumerate(zip(self.tensors, self.versions)):
            if t._version != v:
                raise RuntimeError(f"{func}: `{arg}` (layer {i}) was modified in place between the forward and the "
                                   f"backward (version {v} -> {t._version}); the backward reads it again, so keep "
                                   f"it unchanged until backward has run")


def layer_table(layers: Sequence[Tensor]) -> LayerTable:
    """Describe equally shaped [B, S, D] or [N, D] tensors of one dtype and device (validated by the caller)."""
    base = layers[0]
    size = base.element_size()
    entries, aligned, unit = [], True, True
    for t in layers:
        delta = t.data_ptr() - base.data_ptr()
        if delta % size:
            raise ValueError(f"layer_table: tensor at {t.data_ptr():#x} is not element-aligned with "
                             f"{base.data_ptr():#x}")
        if t.dim() == 2:
            stride_b, stride_s, stride_d = 0, t.stride(0), t.stride(1)
        else:
            stride_b, stride_s, stride_d = t.stride(0), t.stride(1), t.stride(2)
        entries.append((delta // size, stride_b, stride_s, stride_d))
        unit &= stride_d == 1
        vec = 16 // size
        aligned &= t.data_ptr() % 16 == 0 and stride_b % vec == 0 and stride_s % vec == 0
    seq_len = base.shape[0] if base.dim() == 2 else base.shape[1]
    table = torch.tensor(entries, dtype=torch.int64).to(base.device, non_blocking=True)
    return LayerTable(base, tuple(layers), tuple(t._version for t in layers), table, max(seq_len, 1), unit,
                      16 // size if aligned and unit else 1)


@dataclass(frozen=True)
class RowSlots:
    order: Tensor | None  # int64 [N_sel]: cache entries sorted (stably) by student row (None: no rows given)
    slot_rows: Tensor | None  # int64 [N_sel]: the student row of each slot; -1 for unused slots
    slot_start: Tensor | None  # int64 [N_sel + 1]: start of each slot's run in `order`; N_sel for unused slots


def row_slots(rows: Tensor) -> RowSlots:
    """Group the entries of `rows` (int64 [N_sel], N_sel >= 1) by student row, on the device, without a host sync."""
    n = rows.shape[0]
    sorted_rows, order = torch.sort(rows, stable=True)
    is_first = torch.ones(n, dtype=torch.bool, device=rows.device)
    is_first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    slot = torch.cumsum(is_first, 0) - 1
    slot_rows = torch.full((n,), -1, dtype=torch.int64, device=rows.device)
    slot_rows.scatter_(0, slot, sorted_rows)  # every writer of a slot writes the same row
    slot_start = torch.full((n + 2,), n, dtype=torch.int64, device=rows.device)
    dump = torch.full_like(slot, n + 1)  # non-first entries write into a discarded cell
    slot_start.scatter_(0, torch.where(is_first, slot, dump), torch.arange(n, device=rows.device))
    return RowSlots(order, slot_rows, slot_start[: n + 1])
