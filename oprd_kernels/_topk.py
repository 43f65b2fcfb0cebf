"""Top-k with one defined order, shared by the reference and every OPD backend: larger value first, then the smaller
vocabulary id. torch.topk leaves the order of equal values unspecified, and with bf16 logits ties are common (115 of
256 rows in the loss-path benchmark), so without a rule two backends could train on different top-k sets.

NaN ranks below every number (it only appears in rows the losses mask out). -0.0 and +0.0 are equal values.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDO_CHUNK = 1 << 22  # entries of the redone rows handled at once: bounds the temporaries (bools, int32 counts)


def _nan_last(x: Tensor) -> Tensor:
    return x.masked_fill(x.isnan(), float("-inf")) if x.is_floating_point() and bool(x.isnan().any()) else x


def _smallest_ids_among_ties(rows: Tensor, k: int) -> Tensor:
    """ids [r, k] by the rule for rows [r, m] without NaN: every entry above the k-th largest value, then the
    smallest ids of those equal to it."""
    threshold = rows.topk(k, dim=1).values[:, -1:]
    above, tied = rows > threshold, rows == threshold
    places = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    chosen = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= places))
    return chosen.nonzero()[:, 1].view(-1, k)  # row-major: ascending ids within each row


def ordered_topk(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, ids) [..., k] of the k largest entries along the last dimension of x [..., m], the column index being
    the id: descending values, equal values by ascending id. 1 <= k <= m.

    torch.topk of k + 1 entries gives the right values, and the right set wherever the (k+1)-th value differs from
    the k-th. Only the other rows (a tie across the k-th place) and rows holding NaN are redone, a bounded chunk of
    rows at a time, so no [n, m] temporary is ever made for the whole input."""
    m = x.shape[-1]
    flat = x.reshape(-1, m)
    values, ids = flat.topk(min(k + 1, m), dim=1)
    redo = values.isnan().any(dim=1) if flat.is_floating_point() else torch.zeros_like(values[:, 0], dtype=bool)
    if k < m:
        redo |= values[:, k] == values[:, k - 1]
    values, ids = values[:, :k].contiguous(), ids[:, :k].contiguous()
    rows = redo.nonzero().squeeze(1)
    step = max(1, REDO_CHUNK // max(m, 1))
    for start in range(0, rows.numel(), step):
        chunk = rows[start:start + step]
        sub = _nan_last(flat.index_select(0, chunk))
        picked = _smallest_ids_among_ties(sub, k)
        ids[chunk], values[chunk] = picked, sub.gather(1, picked)
    values, ids = _sort_by_value_then_id(values, ids)
    return values.view(*x.shape[:-1], k), ids.view(*x.shape[:-1], k)


def _sort_by_value_then_id(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    by_id = ids.argsort(dim=1, stable=True)
    values, ids = _nan_last(values.gather(1, by_id)), ids.gather(1, by_id)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values, ids.gather(1, order)


def merge_topk(values: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of candidate (values, ids) [n, m] (distinct ids per row, in any order) by the same rule: sort by id,
    then stably by descending value. For small candidate sets (per-split or per-tile winners)."""
    values, ids = _sort_by_value_then_id(values, ids)
    return values[:, :k], ids[:, :k]
