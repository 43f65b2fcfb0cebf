"""One pass over the vocabulary, tile by tile, that keeps only per-row statistics of the logits hidden @ weight.T.

The running log-sum-exp is the online (max, rescaled sum) recurrence; the entropy and the reverse KL ride on the same
rescaling. Rows are the outer loop here (no statistic crosses rows), so each row block of hidden states is read once.
Nothing of size [rows, |V|] is kept: memory is one tile plus O(rows * k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._topk import ordered_topk
from oprd_kernels.opd._tiles import Tiling, in_block, logits_tile, tile_buffer


@dataclass(frozen=True)
class LogitStats:
    """Per-row statistics of the logits z = hidden @ weight.T over the full vocabulary (result dtype)."""

    logsumexp: Tensor  # [n]
    at_ids: Tensor | None = None  # [n, k] logits at the requested ids
    topk_values: Tensor | None = None  # [n, k] the k largest logits, descending; ties: smaller id first
    topk_ids: Tensor | None = None  # [n, k] int64 their vocabulary ids
    entropy: Tensor | None = None  # [n] entropy of softmax(z) in nats


def gather_rows(hidden: Tensor, rows: Tensor | None, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of the live set: a slice of `hidden` ([N, d]) or a block-sized gather through `rows`."""
    return hidden[start:stop] if rows is None else hidden.index_select(0, rows[start:stop])


def _online_update(m: Tensor, s: Tensor, z: Tensor, extra: tuple[Tensor, Tensor] | None = None,
                   scratch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold one tile z into the running max `m` and sum of exp(z - m) `s`; `extra` = (acc, values) accumulates
    sum exp(z - m) * values with the same rescaling, in place. Returns the new (m, s). `scratch` (z's shape) receives
    exp(z - m) when given, so that no tile-sized temporary is allocated; z itself is left intact."""
    m_new = torch.maximum(m, z.amax(dim=1))
    scale = torch.exp(m - m_new)
    e = torch.sub(z, m_new[:, None], out=scratch) if scratch is not None else z - m_new[:, None]
    e.exp_()
    s = s * scale + e.sum(dim=1)
    if extra is not None:
        acc, values = extra
        acc.mul_(scale).add_(e.mul_(values).sum(dim=1))
    return m_new, s


def logit_stats(hidden: Tensor, weight: Tensor, rows: Tensor | None, tiling: Tiling, mm_dtype: torch.dtype,
                out_dtype: torch.dtype, *, ids: Tensor | None = None, topk: int = 0,
                entropy: bool = False) -> LogitStats:
    """Statistics of the live rows (`rows` into hidden's [N, d], or all N) against every vocabulary entry.

    ids: int64 [n, k] vocabulary ids whose logits are returned; topk: how many largest logits to keep; entropy:
    whether to return the softmax entropy. No gradient is tracked.
    """
    n = hidden.shape[0] if rows is None else rows.shape[0]
    vocab = weight.shape[0]
    device = hidden.device
    lse = torch.empty(n, dtype=out_dtype, device=device)
    at_ids = torch.empty(ids.shape, dtype=out_dtype, device=device) if ids is not None else None
    top_v = torch.empty((n, topk), dtype=out_dtype, device=device) if topk else None
    top_i = torch.empty((n, topk), dtype=torch.int64, device=device) if topk else None
    ent = torch.empty(n, dtype=out_dtype, device=device) if entropy else None
    buf, scratch = (tile_buffer(tiling, n, vocab, out_dtype, device) for _ in range(2))
    with torch.no_grad():
        for r0, r1 in tiling.row_ranges(n):
            h = gather_rows(hidden, rows, r0, r1)
            m = torch.full((r1 - r0,), float("-inf"), dtype=out_dtype, device=device)
            s = torch.zeros_like(m)
            ez = torch.zeros_like(m) if entropy else None
            if ids is not None:
                picked = torch.zeros((r1 - r0, ids.shape[1]), dtype=out_dtype, device=device)
            if topk:
                run_v = torch.full((r1 - r0, 0), 0.0, dtype=out_dtype, device=device)
                run_i = torch.zeros((r1 - r0, 0), dtype=torch.int64, device=device)
            for v0, v1 in tiling.vocab_ranges(vocab):
                z = logits_tile(h, weight[v0:v1], mm_dtype, out_dtype, buf)
                m, s = _online_update(m, s, z, (ez, z) if entropy else None, scratch[: z.numel()].view_as(z))
                if ids is not None:
                    col, inside = in_block(ids[r0:r1], v0, v1)
                    picked = torch.where(inside, z.gather(1, col), picked)
                if topk:  # the tile's best by (value, then smaller id); the running set's ids are all smaller, so
                    # a stable descending sort of [running, tile] keeps that order across tiles
                    tv, ti = ordered_topk(z, min(topk, v1 - v0))
                    cat_v, cat_i = torch.cat([run_v, tv], 1), torch.cat([run_i, ti + v0], 1)
                    run_v, sel = cat_v.sort(dim=1, descending=True, stable=True)
                    run_v, run_i = run_v[:, :topk], cat_i.gather(1, sel[:, :topk])
            lse[r0:r1] = m + torch.log(s)
            if ids is not None:
                at_ids[r0:r1] = picked
            if topk:
                top_v[r0:r1], top_i[r0:r1] = run_v, run_i
            if entropy:
                ent[r0:r1] = lse[r0:r1] - ez / s
    return LogitStats(lse, at_ids, top_v, top_i, ent)


@dataclass(frozen=True)
class KLStats:
    """Per-row reverse KL(p || q) between the student's softmax p and the teacher's q, with both log-sum-exps."""

    kl: Tensor  # [n]
    lse_student: Tensor  # [n]
    lse_teacher: Tensor  # [n]


def reverse_kl_stats(hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, rows: Tensor | None,
                     tiling: Tiling, mm_dtypes: tuple[torch.dtype, torch.dtype], out_dtype: torch.dtype) -> KLStats:
    """KL_t = E_p[z_p - z_q] - lse_p + lse_q, both models' tiles computed side by side over one vocabulary pass."""
    n = hidden.shape[0] if rows is None else rows.shape[0]
    device = hidden.device
    kl, lse_p, lse_q = (torch.empty(n, dtype=out_dtype, device=device) for _ in range(3))
    buf_p, buf_q, scratch = (tile_buffer(tiling, n, weight.shape[0], out_dtype, device) for _ in range(3))
    with torch.no_grad():
        for r0, r1 in tiling.row_ranges(n):
            h, th = gather_rows(hidden, rows, r0, r1), gather_rows(t_hidden, rows, r0, r1)
            mp = torch.full((r1 - r0,), float("-inf"), dtype=out_dtype, device=device)
            mq, sp, sq, diff = mp.clone(), torch.zeros_like(mp), torch.zeros_like(mp), torch.zeros_like(mp)
            for v0, v1 in tiling.vocab_ranges(weight.shape[0]):
                zp = logits_tile(h, weight[v0:v1], mm_dtypes[0], out_dtype, buf_p)
                zq = logits_tile(th, t_weight[v0:v1], mm_dtypes[1], out_dtype, buf_q)
                tmp = scratch[: zp.numel()].view_as(zp)
                mq, sq = _online_update(mq, sq, zq, None, tmp)
                mp, sp = _online_update(mp, sp, zp, (diff, zq.neg_().add_(zp)), tmp)
            lse_p[r0:r1], lse_q[r0:r1] = mp + torch.log(sp), mq + torch.log(sq)
            kl[r0:r1] = diff / sp - lse_p[r0:r1] + lse_q[r0:r1]
    return KLStats(kl, lse_p, lse_q)
