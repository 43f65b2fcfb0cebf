"""Which response positions are distilled: `rows` into the flattened batch and their loss `weights`.

Rollouts arrive as [B, S] batches with left-padded prompts and right-padded responses, so a sample's response
tokens are the 1s of its row of `response_mask`. Modes (PAPER_NOTES §2): "all" response tokens, the "last" one,
the "last_k" or "first_k" of them. Per sample min(k, n) tokens are taken when a response has only n: a short or
empty response contributes what it has and is never padded into the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._position_checks import check_mask
from oprd_kernels._validation import as_int

POSITION_MODES = ("all", "last", "last_k", "first_k")
WEIGHTINGS = ("token", "sample")


def _check_mask(response_mask: object) -> Tensor:
    func = "select_positions"
    if isinstance(response_mask, Tensor) and response_mask.dim() != 2:
        raise ValueError(f"{func}: `response_mask` must have shape [B, S]; got shape {tuple(response_mask.shape)}")
    shape, device = (response_mask.shape, response_mask.device) if isinstance(response_mask, Tensor) else (None, None)
    return check_mask(func, "response_mask", response_mask, shape, device, floats=False).bool()


def select_positions(response_mask: Tensor, mode: str = "all", k: int | None = None, *,
                     weighting: str = "token") -> tuple[Tensor, Tensor]:
    """`(rows, weights)` for `oprd_kernels.alignment_loss` from a [B, S] response mask.

    rows: int64 [N_sel], indices b * S + s into the flattened batch, sorted (sample-major, then position).
    weights: float32 [N_sel] on the mask's device, summing to 1 when any row is selected:
        "token"  -> 1 / N_sel for every row (token-mean over the batch, the paper's Eq. 6);
        "sample" -> 1 / (n_b * B') for a row of sample b with n_b selected rows, B' = samples with n_b > 0
                    (mean over each sample, then over samples; samples with nothing selected are left out).
    k is required by "last_k" / "first_k" (int >= 1) and rejected by the other modes.
    """
    func = "select_positions"
    mask = _check_mask(response_mask)
    if mode not in POSITION_MODES:
        raise ValueError(f"{func}: `mode` must be one of {list(POSITION_MODES)}; got {mode!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{func}: `weighting` must be one of {list(WEIGHTINGS)}; got {weighting!r}")
    if mode in ("last_k", "first_k"):
        if as_int(k) is None or k < 1:
            raise ValueError(f"{func}: `k` must be an int >= 1 for mode {mode!r}; got {k!r}")
        k = as_int(k)
    elif k is not None:
        raise ValueError(f"{func}: `k` is only used by modes 'last_k' and 'first_k'; got k={k!r} with mode {mode!r}")

    rank = torch.cumsum(mask.long(), dim=1) - 1  # 0-based rank of each response token from the start
    count = mask.sum(dim=1, keepdim=True)
    rank_from_end = count - 1 - rank
    if mode == "all":
        selected = mask
    elif mode == "first_k":
        selected = mask & (rank < k)
    elif mode == "last_k":
        selected = mask & (rank_from_end < k)
    else:
        selected = mask & (rank_from_end == 0)

    rows = selected.reshape(-1).nonzero().squeeze(1)
    per_sample = selected.sum(dim=1)
    if weighting == "token":
        weights = torch.full(rows.shape, 1.0 / max(rows.numel(), 1), dtype=torch.float32, device=mask.device)
    else:
        samples = (per_sample > 0).sum().clamp_min(1).to(torch.float32)
        row_sample = torch.div(rows, mask.shape[1], rounding_mode="floor")
        weights = 1.0 / (per_sample[row_sample].to(torch.float32) * samples)
    return rows, weights
