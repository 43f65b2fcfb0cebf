"""Validation of the fused OPD losses' inputs: final hidden states and LM-head weights for student and teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._position_checks import check_final_hidden, check_lm_head, check_mask, reads_on_device
from oprd_kernels._validation import check_float_tensor, check_same_device, describe, fail
from oprd_kernels.reference.opd import _check_tokens, check_ids_and_log_probs


@dataclass(frozen=True)
class OPDInputs:
    """The validated call: [N, d] views of the hidden states, the live rows (None = all N), and their facts."""

    hidden: Tensor  # [N, d_s] view of the student's final hidden states
    teacher_hidden: Tensor  # [N, d_t] view
    positions: torch.Size  # the positions' shape ([N] or [B, T])
    rows: Tensor | None  # int64 [n] live positions (mask true), None when every position is live
    tokens: Tensor | None  # int64 [n] sampled tokens at the live positions
    num_live: int
    out_dtype: torch.dtype
    ids: Tensor | None = None  # int64 [n, k] precomputed ids at the live positions (fused_opd_loss_at_ids)
    teacher_log_probs: Tensor | None = None  # [n, k]
    shared_vocab: int = 0  # min(V_s, V_t): the ids both heads have (0 for fused_opd_loss_at_ids: the student's V)


def _live_rows(mask: Tensor | None) -> Tensor | None:
    """The live positions' indices (one host synchronisation: the number of live rows sizes every pass)."""
    return None if mask is None else mask.reshape(-1).bool().nonzero().squeeze(1)


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_opd_inputs(func: str, hidden: object, weight: object, teacher_hidden: object, teacher_weight: object,
                     tokens: object, mask: object, *, needs_tokens: bool) -> OPDInputs:
    positions = check_final_hidden(func, "hidden", hidden)
    device, on_device = hidden.device, reads_on_device(hidden.device)
    check_lm_head(func, "weight", weight, hidden.shape[-1], device)
    check_float_tensor(func, "teacher_hidden", teacher_hidden)
    if teacher_hidden.shape[:-1] != positions or teacher_hidden.dim() != hidden.dim() or teacher_hidden.shape[-1] == 0:
        raise fail(ValueError, func, "teacher_hidden", f"must have the student's positions {tuple(positions)} "
                   "followed by the teacher's hidden size", describe(teacher_hidden))
    check_same_device(func, "teacher_hidden", teacher_hidden, device)
    check_lm_head(func, "teacher_weight", teacher_weight, teacher_hidden.shape[-1], device)
    shared = min(weight.shape[0], teacher_weight.shape[0])  # padded heads: each normalises over its own rows
    mask = check_mask(func, "mask", mask, positions, device, on_device=on_device)
    live_tokens = None
    if needs_tokens:
        live_tokens = _check_tokens(func, tokens, positions, shared, mask, device, on_device=on_device).reshape(-1)
    rows = _live_rows(mask)
    if rows is not None and live_tokens is not None:
        live_tokens = live_tokens.index_select(0, rows)
    num = int(positions.numel()) if rows is None else int(rows.shape[0])
    return OPDInputs(hidden.reshape(-1, hidden.shape[-1]), teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
                     positions, rows, live_tokens, num, _out_dtype(hidden, weight, teacher_hidden, teacher_weight),
                     shared_vocab=shared)


def check_at_ids_inputs(func: str, hidden: object, weight: object, ids: object, teacher_log_probs: object,
                        mask: object) -> OPDInputs:
    """The call of fused_opd_loss_at_ids: the teacher side comes as (ids, teacher_log_probs) instead of a head."""
    positions = check_final_hidden(func, "hidden", hidden)
    device, on_device = hidden.device, reads_on_device(hidden.device)
    check_lm_head(func, "weight", weight, hidden.shape[-1], device)
    mask = check_mask(func, "mask", mask, positions, device, on_device=on_device)
    ids = check_ids_and_log_probs(func, ids, teacher_log_probs, positions, weight.shape[0], mask, device,
                                  on_device=on_device)
    k = ids.shape[-1]
    ids, log_q = ids.reshape(-1, k), teacher_log_probs.reshape(-1, k)
    rows = _live_rows(mask)
    if rows is not None:
        ids, log_q = ids.index_select(0, rows), log_q.index_select(0, rows)
    num = int(positions.numel()) if rows is None else int(rows.shape[0])
    out = _out_dtype(hidden, weight, teacher_log_probs)
    return OPDInputs(hidden.reshape(-1, hidden.shape[-1]), None, positions, rows, None, num, out, ids, log_q.to(out))
