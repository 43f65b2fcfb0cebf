"""The generalised Jensen-Shannon divergence (TRL GKD's; reference.generalized_jsd_loss) for the fused passes: its
arithmetic on blocks of log-probabilities, the `rowwise` chunk, and the vocabulary-tiled pass of the loss.

Per row, over the shared ids v < S, with log m = logaddexp(log p + log(1 - beta), log q + log beta), a = log p - log m:
    0 < beta < 1: JSD = beta * sum q (log q - log m) + (1 - beta) * E,  E = sum p a
                  d JSD / d z_v = (1 - beta) * p_v * (a_v - E)  (as d JSD / d p_v = (1 - beta) a_v; a_v = 0 for v >= S)
    beta = 0:     JSD = KL(q || p) = sum q (log q - log p),             E = sum q (1 unless the heads differ in size)
                  d JSD / d z_v = p_v * E - q_v                      (q_v = 0 for v >= S)
beta = 1 (the reverse KL) runs the full-vocabulary KL's own passes. Each log-ratio is formed per element before its
sum, as in the reverse KL (_row_chunks.full_kl_chunk), and no temporary is larger than one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels.opd._tiles import Tiling, logits_tile, tile_buffer
from oprd_kernels.opd.stats import gather_rows


def block_terms_(log_p: Tensor, log_q: Tensor, beta: float, dim: int) -> tuple[Tensor, Tensor]:
    """Per-row (JSD part, E part) of one block of log p and log q (the vocabulary along `dim`, shared ids only).
    Both are overwritten: log_p with p (the gradient's other factor, so it needs no second exponential) and log_q
    with the gradient's per-element factor: a (0 < beta < 1) or q (beta = 0)."""
    if beta == 0.0:
        q = log_q.exp()
        kl = torch.sub(log_q, log_p).mul_(q).sum(dim)
        log_q.copy_(q)
        log_p.exp_()
        return kl, q.sum(dim)
    log_m = torch.add(log_p, math.log1p(-beta))
    tmp = torch.add(log_q, math.log(beta))
    torch.logaddexp(log_m, tmp, out=log_m)
    teacher = torch.sub(log_q, log_m, out=tmp).mul_(log_q.exp()).sum(dim)  # sum q (log q - log m)
    a = log_q.copy_(log_p).sub_(log_m)
    e = torch.mul(log_p.exp_(), a, out=log_m).sum(dim)
    return teacher.mul_(beta).add_(e, alpha=1.0 - beta), e


def tail_coefficient(beta: float, e: Tensor) -> Tensor:
    """d JSD / d z_v = coefficient * p_v at the student's ids past the shared ones (v >= S)."""
    return e if beta == 0.0 else e * -(1.0 - beta)


def gradient_tile_(log_p: Tensor, log_q: Tensor, beta: float, e: Tensor, row_w: Tensor) -> Tensor:
    """row_w * d JSD / d z on a [rows, block] tile of the shared ids (e, row_w: [rows]), written over log_p (log_q is
    overwritten too)."""
    e, row_w = e[:, None], row_w[:, None]
    if beta == 0.0:
        return log_p.exp_().mul_(e).sub_(log_q.exp_()).mul_(row_w)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    a_minus_e = log_q.copy_(log_p).sub_(log_m).sub_(e)
    return log_p.exp_().mul_(a_minus_e).mul_(row_w * (1.0 - beta))


# Vocabulary rows per elementwise block of a rowwise chunk: the block's ~10 passes then run in cache (a [1024, 256]
# fp32 block is 1 MB). Measured on one [151,936, 256] chunk (2 cores): 8192-row blocks 1.1x slower.
JSD_BLOCK = 1024


def _column_lse(zt: Tensor) -> Tensor:
    """The log-sum-exp over the vocabulary (dim 0) of zt [V, rows], its exponentials taken in blocks."""
    m = zt.amax(dim=0)
    s = torch.zeros_like(m)
    for v0 in range(0, zt.shape[0], JSD_BLOCK):
        s += torch.exp(zt[v0:v0 + JSD_BLOCK] - m).sum(dim=0)
    return m.add_(s.log_())


def jsd_chunk(zt: Tensor, log_qt: Tensor, shared: int, beta: float, row_w: float,
              want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The JSD of a vocabulary-major `rowwise` chunk (zt [V, rows] student logits, log_qt [V_t, rows] the teacher's
    log-probabilities; both overwritten): its loss share and, with want_grad, its logits gradient [V, rows], written
    over zt. One sweep of blocks normalises, takes the loss terms and leaves p behind for the gradient. Memory: the
    two chunk buffers and block temporaries."""
    lse = _column_lse(zt)
    loss = torch.zeros(zt.shape[1], dtype=zt.dtype, device=zt.device)
    e = torch.zeros_like(loss)
    for v0 in range(0, shared, JSD_BLOCK):
        v1 = min(v0 + JSD_BLOCK, shared)
        part, e_part = block_terms_(zt[v0:v1].sub_(lse), log_qt[v0:v1], beta, 0)  # zt[v0:v1] becomes p
        loss += part
        e += e_part
    if not want_grad:
        return loss.sum() * row_w, None
    g = zt
    g[shared:].sub_(lse).exp_()  # p past the shared ids (the sweep left p at the shared ones)
    factor = log_qt[:shared]  # a (0 < beta < 1) or q (beta = 0)
    if beta == 0.0:  # row_w (p E - q)
        g.mul_(e * row_w)[:shared].sub_(factor.mul_(row_w))
    else:  # row_w (1 - beta) p (a - E), and row_w * tail_coefficient * p past the shared ids
        g[:shared].mul_(factor.sub_(e).mul_((1.0 - beta) * row_w))
        g[shared:].mul_(tail_coefficient(beta, e) * row_w)
    return loss.sum() * row_w, g


@dataclass(frozen=True)
class JSDStats:
    """Per-row results of the JSD's tile pass (jsd_stats)."""

    jsd: Tensor  # [n] the JSD over the heads' rows
    e: Tensor  # [n] the gradient's per-row constant E (module docstring)


def jsd_stats(hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, rows: Tensor | None,
              tiling: Tiling, mm_dtypes: tuple[torch.dtype, torch.dtype], out_dtype: torch.dtype, lse_p: Tensor,
              lse_q: Tensor, beta: float) -> JSDStats:
    """The JSD and E of the live rows over the heads' rows (callers pass the shared rows), both models' tiles side by
    side, normalised by the log-sum-exps of their whole heads (from the statistics passes)."""
    n = hidden.shape[0] if rows is None else rows.shape[0]
    jsd = torch.zeros(n, dtype=out_dtype, device=hidden.device)
    e = torch.zeros_like(jsd)
    buf_p, buf_q = (tile_buffer(tiling, n, weight.shape[0], out_dtype, hidden.device) for _ in range(2))
    with torch.no_grad():
        for r0, r1 in tiling.row_ranges(n):
            h, th = gather_rows(hidden, rows, r0, r1), gather_rows(t_hidden, rows, r0, r1)
            for v0, v1 in tiling.vocab_ranges(weight.shape[0]):
                log_p = logits_tile(h, weight[v0:v1], mm_dtypes[0], out_dtype, buf_p).sub_(lse_p[r0:r1, None])
                log_q = logits_tile(th, t_weight[v0:v1], mm_dtypes[1], out_dtype, buf_q).sub_(lse_q[r0:r1, None])
                part, e_part = block_terms_(log_p, log_q, beta, 1)
                jsd[r0:r1] += part
                e[r0:r1] += e_part
    return JSDStats(jsd, e)
