"""The gradient pass of the fused OPD losses: d loss / d logits is formed one tile at a time and immediately
multiplied into the gradients of the hidden states and of the LM-head weight (the logits gradient never exists whole).

Every OPD loss here has a logits gradient of the form
    g[r, v] = dense[r] * p[r, v] + sparse[r, j] * [v == ids[r, j]]          (sampled-token, top-k)
    g[r, v] = row_weight[r] * p[r, v] * (log p[r, v] - log q[r, v] - KL[r])  (full-vocabulary reverse KL)
    g[r, v] = row_weight[r] * d JSD / d z[r, v] from p, q and a per-row constant     (generalised JSD: _jsd.py)
with p = softmax of the student logits, known from the stats pass's log-sum-exp. Vocabulary blocks are the outer
loop, so each block's weight gradient is accumulated over all rows in the result dtype and written once in the
weight's dtype; the hidden-state gradient of the live rows accumulates in the result dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels.opd._jsd import gradient_tile_
from oprd_kernels.opd._tiles import Tiling, as_operand, gemm_dtype, in_block, logits_tile, tile_buffer
from oprd_kernels.opd.stats import gather_rows


def product(a: Tensor, b: Tensor, mm_dtype: torch.dtype, out_dtype: torch.dtype) -> Tensor:
    """a @ b in `out_dtype` without rounding the product to a lower `mm_dtype` per tile (the per-tile sums are added
    up over many tiles). CUDA: the half-precision matmul with an fp32 output where torch offers it; otherwise (and on
    CPU) the matmul in `out_dtype` on the upcast operands."""
    if mm_dtype != out_dtype and a.is_cuda:
        try:
            return torch.mm(a.to(mm_dtype), b.to(mm_dtype), out_dtype=out_dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return a.to(out_dtype) @ b.to(out_dtype)


@dataclass(frozen=True)
class HeadGradients:
    """What backprop_logits returns (every backend): the gradients of the LM-head inputs, None where not wanted."""

    hidden: Tensor | None  # d loss / d hidden [N, d] in hidden's dtype (0 at rows outside the live set)
    weight: Tensor | None  # d loss / d weight [V, d] in weight's dtype


@dataclass(frozen=True)
class KLTerms:
    """The teacher side of the KL form of the logits gradient: d/dz = w p (log p - log q - KL) with log q recomputed
    from the teacher's tile."""

    teacher_hidden: Tensor  # [N, d_t]
    teacher_weight: Tensor  # [V, d_t]
    lse_teacher: Tensor  # [n] the teacher's log-sum-exp
    kl: Tensor  # [n] the per-row constant subtracted (the KL, or KL + P_S - 1 over the shared ids of padded heads)


@dataclass(frozen=True)
class JSDTerms:
    """The teacher side of the generalised JSD's logits gradient (_jsd.py), log q recomputed from the teacher's tile."""

    teacher_hidden: Tensor  # [N, d_t]
    teacher_weight: Tensor  # [V, d_t]
    lse_teacher: Tensor  # [n] the teacher's log-sum-exp
    beta: float  # in [0, 1)
    e: Tensor  # [n] the per-row constant E of _jsd.py


@dataclass(frozen=True)
class LogitGradient:
    """What d loss / d logits is, per live row (see the module docstring)."""

    lse: Tensor  # [n] student log-sum-exp
    dense: Tensor | None = None  # [n] coefficient of p (sampled-token, top-k)
    ids: Tensor | None = None  # [n, k] where the sparse coefficients sit
    sparse: Tensor | None = None  # [n, k]
    kl: KLTerms | None = None  # the KL form's teacher side (full-vocabulary reverse KL)
    row_weight: Tensor | None = None  # [n], for the KL and JSD forms
    jsd: JSDTerms | None = None  # the JSD form's teacher side (generalised JSD; chunked passes only)


def backprop_logits(hidden: Tensor, weight: Tensor, rows: Tensor | None, grad: LogitGradient, tiling: Tiling,
                    mm_dtypes: tuple[torch.dtype, torch.dtype], out_dtype: torch.dtype, *, want_hidden: bool,
                    want_weight: bool) -> HeadGradients:
    """HeadGradients: d loss / d hidden [N, d] in hidden's dtype and d loss / d weight [V, d] in weight's dtype;
    None where unwanted. Rows outside the live set get a zero gradient."""
    n = hidden.shape[0] if rows is None else rows.shape[0]
    vocab, dim = weight.shape
    device = hidden.device
    d_live = torch.zeros((n, dim), dtype=out_dtype, device=device) if want_hidden else None
    d_weight = torch.empty_like(weight) if want_weight else None
    mm = mm_dtypes[0]
    gemm, gemm_t = (gemm_dtype(dtype, out_dtype, device) for dtype in mm_dtypes)
    teacher = grad.kl if grad.kl is not None else grad.jsd  # the forms that recompute the teacher's tile
    buf = tile_buffer(tiling, n, vocab, out_dtype, device)
    buf_q = tile_buffer(tiling, n, vocab, out_dtype, device) if teacher is not None else None
    with torch.no_grad():
        for v0, v1 in tiling.vocab_ranges(vocab):
            w_blk = as_operand(weight[v0:v1], mm, gemm)  # once per block (a copy only for an upcast product)
            tw_blk = as_operand(teacher.teacher_weight[v0:v1], mm_dtypes[1], gemm_t) if teacher is not None else None
            dw_blk = torch.zeros((v1 - v0, dim), dtype=out_dtype, device=device) if want_weight else None
            for r0, r1 in tiling.row_ranges(n):
                h = as_operand(gather_rows(hidden, rows, r0, r1), mm, gemm)
                log_p = logits_tile(h, w_blk, mm, out_dtype, buf, weight_ready=True).sub_(grad.lse[r0:r1, None])
                if teacher is not None:  # built in the two tiles in place
                    zq = logits_tile(gather_rows(teacher.teacher_hidden, rows, r0, r1), tw_blk, mm_dtypes[1],
                                     out_dtype, buf_q, weight_ready=True)
                    log_q = zq.sub_(teacher.lse_teacher[r0:r1, None])
                    if grad.jsd is not None:
                        g = gradient_tile_(log_p, log_q, grad.jsd.beta, grad.jsd.e[r0:r1], grad.row_weight[r0:r1])
                    else:  # g = w * p * (log p - log q - KL)
                        factor = log_q.neg_().add_(log_p).sub_(grad.kl.kl[r0:r1, None])
                        g = log_p.exp_().mul_(factor).mul_(grad.row_weight[r0:r1, None])
                else:
                    g = log_p.exp_().mul_(grad.dense[r0:r1, None])
                    col, inside = in_block(grad.ids[r0:r1], v0, v1)
                    g.scatter_add_(1, col, torch.where(inside, grad.sparse[r0:r1], 0.0))
                if want_hidden:
                    d_live[r0:r1] += product(g, w_blk, mm, out_dtype)
                if want_weight:
                    dw_blk += product(g.T, h, mm, out_dtype)
            if want_weight:
                d_weight[v0:v1] = dw_blk
    return HeadGradients(live_to_dense(d_live, hidden, rows) if want_hidden else None, d_weight)


def live_to_dense(d_live: Tensor, hidden: Tensor, rows: Tensor | None) -> Tensor:
    """The hidden-state gradient in hidden's shape and dtype from the live rows' [n, d] gradient (zeros elsewhere)."""
    if rows is None:
        return d_live.to(hidden.dtype)
    return torch.zeros_like(hidden).index_copy_(0, rows, d_live.to(hidden.dtype))
