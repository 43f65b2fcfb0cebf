"""Tiling of the LM-head product hidden @ weight.T: the [rows, vocab] logits only ever exist one tile at a time.

A tile is at most `row_block` x `vocab_block` logits, computed by one matmul in the matmul dtype (the model's own
LM-head precision: the autocast dtype when autocast is on, else the promoted input dtype) and upcast to the result
dtype (float32, or float64 for float64 inputs) for every softmax quantity.
"""

from __future__ import annotations

import os
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


CPU_HALF_MATMUL_ENV = "OPRD_CPU_HALF_MATMUL"
CPU_HALF_MATMUL_CHOICES = ("auto", "native", "float32")


def _native_half_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies `dtype` matrices natively (AVX512-BF16 or AMX for bf16, AMX-FP16 for fp16)."""
    probes = {torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
              torch.float16: ("_is_amx_fp16_supported",)}[dtype]
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def gemm_dtype(mm_dtype: torch.dtype, out_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype an LM-head product in `mm_dtype` actually runs in. On a CPU without native 16-bit matrix units, a
    bf16/fp16 GEMM is emulated and several times slower than an fp32 one (measured on an AVX2 EPYC: 17 against 90
    GFLOP/s), so the product runs in `out_dtype` (float32) on the upcast operands and logits_tile rounds the result
    to `mm_dtype`: the model's own logits up to summation order. $OPRD_CPU_HALF_MATMUL: auto (default), native
    (always the 16-bit GEMM) or float32 (always the upcast one)."""
    if device.type != "cpu" or mm_dtype not in (torch.bfloat16, torch.float16) or out_dtype == mm_dtype:
        return mm_dtype
    choice = os.environ.get(CPU_HALF_MATMUL_ENV, "auto") or "auto"
    if choice not in CPU_HALF_MATMUL_CHOICES:
        raise ValueError(f"${CPU_HALF_MATMUL_ENV} must be one of {list(CPU_HALF_MATMUL_CHOICES)}, got {choice!r}")
    if choice == "native" or (choice == "auto" and _native_half_matmul(mm_dtype)):
        return mm_dtype
    return out_dtype


def as_operand(x: Tensor, mm_dtype: torch.dtype, gemm: torch.dtype) -> Tensor:
    """x as an operand of a product in `mm_dtype`'s precision run in `gemm` (gemm_dtype): rounded to mm_dtype first
    (autocast's rounding of fp32 inputs), then upcast when the product runs upcast. No copy when x is in mm_dtype
    and the product runs in it."""
    return x.to(mm_dtype).to(gemm)


def round_to_(z: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """z (an upcast product's result) rounded in place to mm_dtype's precision: the 16-bit GEMM's own rounding."""
    return z.copy_(z.to(mm_dtype))


def logits_tile(hidden_rows: Tensor, weight_block: Tensor, mm_dtype: torch.dtype, out_dtype: torch.dtype,
                buffer: Tensor | None = None, *, weight_ready: bool = False) -> Tensor:
    """[rows, vocab_block] logits of one tile in `mm_dtype`'s precision, returned in `out_dtype`; written into
    `buffer` (a reused tile, at least as large) when the product runs in `out_dtype` (gemm_dtype), so that a pass
    allocates one tile. weight_ready: the weight block is already as_operand's result (prepared once for many
    tiles), so it is used as it is."""
    gemm = gemm_dtype(mm_dtype, out_dtype, hidden_rows.device)
    h = as_operand(hidden_rows, mm_dtype, gemm)
    w = weight_block if weight_ready else as_operand(weight_block, mm_dtype, gemm)
    if buffer is not None and gemm == out_dtype:
        out = buffer.view(-1)[: h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
        z = torch.matmul(h, w.T, out=out)
        return z if gemm == mm_dtype else round_to_(z, mm_dtype)
    z = h @ w.T
    return z.to(mm_dtype).to(out_dtype) if gemm != mm_dtype else z.to(out_dtype)


def tile_buffer(tiling: Tiling, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """One reusable tile of logits."""
    return torch.empty(min(tiling.row_block, max(rows, 1)) * min(tiling.vocab_block, vocab), dtype=dtype,
                       device=device)


def in_block(ids: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """(column of each id within the vocab block [start, stop) clamped to a valid column, whether it lies inside)."""
    local = ids - start
    inside = (local >= 0) & (local < stop - start)
    return local.clamp(0, stop - start - 1), inside
