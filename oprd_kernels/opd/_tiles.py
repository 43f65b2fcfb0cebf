"""Tiling of the LM-head product hidden @ weight.T: the [rows, vocab] logits only ever exist one tile at a time.

A tile is at most `row_block` x `vocab_block` logits, computed by one matmul in the matmul dtype (the model's own
LM-head precision: the autocast dtype when autocast is on, else the promoted input dtype) and upcast to the result
dtype (float32, or float64 for float64 inputs) for every softmax quantity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from oprd_kernels._validation import as_int, fail

# Logits per tile when the caller does not choose: ~64 MB of fp32 on a GPU (a few such tiles are live at once),
# ~4 MB on a CPU where the tile should stay near the caches.
DEFAULT_TILE_ELEMENTS = {"cuda": 1 << 24, "cpu": 1 << 21}
DEFAULT_VOCAB_BLOCK = {"cuda": 8192, "cpu": 8192}  # CPU: a 2048-wide block ran the matmuls 2x slower than one GEMM


@dataclass(frozen=True)
class Tiling:
    row_block: int
    vocab_block: int

    def vocab_ranges(self, vocab: int) -> Iterator[tuple[int, int]]:
        for start in range(0, vocab, self.vocab_block):
            yield start, min(start + self.vocab_block, vocab)

    def row_ranges(self, rows: int) -> Iterator[tuple[int, int]]:
        for start in range(0, rows, self.row_block):
            yield start, min(start + self.row_block, rows)


def check_blocks(func: str, row_block: object, vocab_block: object) -> None:
    for name, value in (("row_block", row_block), ("vocab_block", vocab_block)):
        if value is not None and (as_int(value) is None or value < 1):
            raise fail(ValueError, func, name, "must be a positive int or None", repr(value))


def choose_tiling(rows: int, vocab: int, device: torch.device, row_block: int | None,
                  vocab_block: int | None) -> Tiling:
    kind = "cuda" if device.type == "cuda" else "cpu"
    vb = min(vocab, vocab_block or DEFAULT_VOCAB_BLOCK[kind])
    rb = row_block or max(1, DEFAULT_TILE_ELEMENTS[kind] // max(vb, 1))
    return Tiling(max(1, min(rb, max(rows, 1))), max(vb, 1))


def matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The LM head's own precision: the autocast dtype when autocast is on for the device, else the promoted dtype."""
    kind = hidden.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        if hidden.dtype != torch.float64 and weight.dtype != torch.float64:
            return dtype
    return torch.promote_types(hidden.dtype, weight.dtype)


def logits_tile(hidden_rows: Tensor, weight_block: Tensor, mm_dtype: torch.dtype, out_dtype: torch.dtype,
                buffer: Tensor | None = None) -> Tensor:
    """[rows, vocab_block] logits of one tile, computed in `mm_dtype` and returned in `out_dtype`; written into
    `buffer` (a reused tile, at least as large) when the two dtypes agree, so that a pass allocates one tile."""
    h, w = hidden_rows.to(mm_dtype), weight_block.to(mm_dtype)
    if buffer is not None and mm_dtype == out_dtype:
        out = buffer.view(-1)[: h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
        return torch.matmul(h, w.T, out=out)
    return (h @ w.T).to(out_dtype)


def tile_buffer(tiling: Tiling, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """One reusable tile of logits."""
    return torch.empty(min(tiling.row_block, max(rows, 1)) * min(tiling.vocab_block, vocab), dtype=dtype,
                       device=device)


def in_block(ids: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(column of each id within the vocab block [start, stop) clamped to a valid column, whether it lies inside)."""
    local = ids - start
    inside = (local >= 0) & (local < stop - start)
    return local.clamp(0, stop - start - 1), inside
