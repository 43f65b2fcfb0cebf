"""Per-row loss formulas shared by the alignment and bridge losses (plain PyTorch, differentiable).

For rows s (student) and t (teacher) of width d:
  mse    = ||s - t||^2 / d                                   (PAPER_NOTES Eq. 6)
  nmse   = ||s/|s| - t/|t| ||^2 / d  = (2 - 2 cos) / d        (the Bridge branch's normalised variant)
  cosine = 1 - cos(s, t)

Zero-norm guard: a row whose L2 norm is below NORM_EPS is treated as the zero vector after normalisation, so its
cosine with anything is 0 (cosine loss 1; nmse = |t_hat|^2 / d) and it receives no gradient. This keeps padding-like
rows from producing the 1/eps gradients a clamped normalisation would give. Fast backends implement the same rule
from three row reductions (s.s, t.t, s.t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._validation import result_dtype

NORM_EPS = 1e-6


def normalize_rows(x: Tensor) -> Tensor:
    """x / ||x|| per row, with the zero-norm guard above."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.where(norm >= NORM_EPS, norm.clamp_min(NORM_EPS).reciprocal(), torch.zeros_like(norm))


def row_loss(s: Tensor, t: Tensor, loss_type: str) -> Tensor:
    """Per-row loss [N] between s and t ([N, d] each), computed in float32 at least (float64 if either is).

    Low-precision rows are upcast first, as the paper's reference code does: in bf16, 1 - cos near cos = 1 (where
    training runs) cancels catastrophically, giving per-row errors of several percent.
    """
    dtype = result_dtype(s.dtype, t.dtype)
    s, t = s.to(dtype), t.to(dtype)
    width = s.shape[-1]
    if loss_type == "mse":
        return (s - t).pow(2).sum(-1) / width
    s_hat, t_hat = normalize_rows(s), normalize_rows(t)
    if loss_type == "nmse":
        return (s_hat - t_hat).pow(2).sum(-1) / width
    if loss_type == "cosine":
        return 1 - (s_hat * t_hat).sum(-1)
    raise ValueError(f"row_loss: `loss_type` must be one of ['mse', 'nmse', 'cosine']; got {loss_type!r}")


def row_cosine(s: Tensor, t: Tensor) -> Tensor:
    """Per-row cosine [N] in float32 at least, with the zero-norm guard (0 for a zero-norm row)."""
    dtype = result_dtype(s.dtype, t.dtype)
    return (normalize_rows(s.to(dtype)) * normalize_rows(t.to(dtype))).sum(-1)


def weighted_layer_sum(per_row: Tensor, weights: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """sum_r w_r * per_row[r] in out_dtype; weights None means 1/N_sel (token-mean); empty rows give 0. Weights are
    constants: no gradient flows into them."""
    per_row = per_row.to(out_dtype)
    if weights is None:
        return per_row.sum() / max(per_row.shape[0], 1)
    return (per_row * weights.detach().to(out_dtype)).sum()
