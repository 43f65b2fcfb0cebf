"""`lm_head_stats` outside compilation (head_stats.py dispatches; opd/custom_ops.py runs it as the custom op's body):
the checks, the backend passes and the statistics, and `HeadStats`, what it returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._position_checks import check_final_hidden, check_id_range, check_lm_head, reads_on_device
from oprd_kernels._validation import as_int, check_same_device, describe, fail
from oprd_kernels.opd._passes import resolve_passes
from oprd_kernels.opd._shared_vocab import head_statistics
from oprd_kernels.opd._tiles import check_blocks, choose_tiling, matmul_dtype
from oprd_kernels.opd.rowwise import row_tiling


def _check_ids(func: str, ids: object, positions: torch.Size, vocab: int, bound: int, device: torch.device) -> None:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64:
        raise fail(TypeError, func, "ids", "must be an int64 tensor or None", describe(ids))
    if ids.dim() != len(positions) + 1 or ids.shape[:-1] != positions:
        raise fail(ValueError, func, "ids", f"must have shape {tuple(positions)} + (k,)", describe(ids))
    check_same_device(func, "ids", ids, device)
    expected = None if bound == vocab else (f"must be below topk_among = {bound} (token ids in [0, {bound - 1}]) "
                                            "when a top-k is asked for too")
    check_id_range(func, "ids", ids, bound, expected=expected, on_device=reads_on_device(device))


@dataclass(frozen=True)
class HeadStats:
    """Shapes are the positions' ([N] or [B, T]) followed by k where it applies; float32 (float64 inputs: float64)."""

    logsumexp: Tensor
    log_probs: Tensor | None  # at the requested ids
    topk_log_probs: Tensor | None
    topk_ids: Tensor | None
    entropy: Tensor | None


def eager_lm_head_stats(hidden: Tensor, weight: Tensor, *, ids: Tensor | None = None, topk: int = 0,
                        entropy: bool = False, topk_among: int | None = None, row_block: int | None = None,
                        vocab_block: int | None = None, backend: str | None = None) -> HeadStats:
    """`lm_head_stats` outside compilation (the custom op's body)."""
    func = "lm_head_stats"
    positions = check_final_hidden(func, "hidden", hidden)
    check_lm_head(func, "weight", weight, hidden.shape[-1], hidden.device)
    check_blocks(func, row_block, vocab_block)
    vocab = weight.shape[0]
    if topk_among is not None and (as_int(topk_among) is None or not 1 <= topk_among <= vocab):
        raise fail(ValueError, func, "topk_among", f"must be None or an int in [1, V = {vocab}]", repr(topk_among))
    among = vocab if topk_among is None else as_int(topk_among)
    if as_int(topk) is None or not 0 <= topk <= among:
        raise fail(ValueError, func, "topk", f"must be an int in [0, {among}] (V = {vocab}, topk_among = "
                   f"{topk_among})", repr(topk))
    topk = as_int(topk)
    if ids is not None:
        _check_ids(func, ids, positions, vocab, among if topk else vocab, hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    passes = resolve_passes(func, backend, hidden.device)
    tiling = (row_tiling(flat.shape[0], vocab, row_block) if passes.whole_loss is not None else
              choose_tiling(flat.shape[0], vocab, hidden.device, row_block, vocab_block))
    st = head_statistics(passes, flat, weight.detach(), None, tiling, matmul_dtype(hidden, weight), out,
                         among if topk else vocab, ids=None if ids is None else ids.reshape(-1, ids.shape[-1]),
                         topk=topk, entropy=entropy)
    lse = st.logsumexp

    def shaped(x: Tensor | None, per_k: bool) -> Tensor | None:
        return None if x is None else x.reshape(*positions, *((x.shape[-1],) if per_k else ()))

    return HeadStats(shaped(lse, False),
                     shaped(None if st.at_ids is None else st.at_ids - lse[:, None], True),
                     shaped(None if st.topk_values is None else st.topk_values - lse[:, None], True),
                     shaped(st.topk_ids, True), shaped(st.entropy, False))
