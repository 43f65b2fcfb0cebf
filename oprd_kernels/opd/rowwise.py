"""The `rowwise` OPD backend: one pass per chunk of rows over the whole vocabulary (Liger's fused linear loss layout).

Each chunk's [rows, |V|] logits are computed once by one GEMM, and the chunk's loss, its logits gradient and both
input gradients are finished from them before the next chunk: three student LM-head products in all (as many as the
naive path) instead of the vocabulary-tiled path's four, and the top-k over whole rows (ties to the smaller id, as
everywhere). Memory: a few [rows, |V|] chunks (~2^24 logits each unless row_block says otherwise)
and, for a weight stored below fp32, an fp32 accumulator of the weight gradient [|V|, d] (twice the gradient's own
size, which is why `auto` picks the vocabulary tiles for such weights). This is the CPU default for fp32 heads:
measured at 256 rows, d = 512, |V| = 151,936, it is 10% faster than the vocabulary tiles (one GEMM per chunk instead of
two per tile) at 1.6x their memory, and 1.0x to 1.25x the naive path's time at 0.74x its memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._topk import ordered_topk
from oprd_kernels.opd._gradient import live_to_dense, product
from oprd_kernels.opd._inputs import OPDInputs
from oprd_kernels.opd._tiles import Tiling, logits_tile
from oprd_kernels.opd.diagnostics import OPDStats, concat_stats, stats_from_logits
from oprd_kernels.opd.stats import gather_rows

CHUNK_ELEMENTS = 1 << 24  # logits per chunk when row_block is not given (64 MB in fp32)


def row_tiling(rows: int, vocab: int, row_block: int | None) -> Tiling:
    """Whole-vocabulary tiles of row_block rows (default: ~CHUNK_ELEMENTS logits, at least one row)."""
    rb = row_block or max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return Tiling(max(1, min(rb, max(rows, 1))), max(vocab, 1))


def _chunk_loss(kind: str, inp: OPDInputs, z: Tensor, t_weight: Tensor, r0: int, r1: int, k: int,
                mm_t: torch.dtype, row_w: float, want_grad: bool,
                stats: list[OPDStats] | None = None, stats_k: int = 0) -> tuple[Tensor, Tensor | None]:
    """(the chunk's share of the loss, its logits gradient written over z in place, or None). t_weight is already in
    the teacher's matmul dtype. With `stats` (a list) the chunk's OPDStats are appended to it, from the logits before
    they are overwritten."""
    out = z.dtype
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    shared = inp.shared_vocab or z.shape[1]
    teacher = None
    if kind != "at_ids":
        teacher = logits_tile(gather_rows(inp.teacher_hidden, inp.rows, r0, r1), t_weight, mm_t, out)
        if stats is not None:
            stats.append(stats_from_logits(z, teacher, inp.tokens[r0:r1], shared, stats_k))
        teacher.sub_(torch.logsumexp(teacher, dim=1, keepdim=True))  # log q
    if kind == "full_vocab" and not shared == z.shape[1] == teacher.shape[1]:
        return _padded_kl(z.sub_(lse), teacher, shared, row_w, want_grad)
    if kind == "full_vocab":  # KL_t = sum_v p (log p - log q); d/dz = p (log p - log q - KL_t)
        log_p = z.sub_(lse)
        log_ratio = teacher.neg_().add_(log_p)
        p = log_p.exp()  # log_p (= z) is no longer needed after this
        kl = (p * log_ratio).sum(dim=1, keepdim=True)
        if not want_grad:
            return kl.sum() * row_w, None
        return kl.sum() * row_w, p.mul_(log_ratio.sub_(kl)).mul_(row_w)
    if kind == "sampled_token":
        ids = inp.tokens[r0:r1, None]
    elif kind == "topk":
        ids = ordered_topk(z[:, :shared], k)[1]  # among the ids both heads have
    else:
        ids = inp.ids[r0:r1]
    log_p = z.gather(1, ids) - lse
    log_q = inp.teacher_log_probs[r0:r1] if kind == "at_ids" else teacher.gather(1, ids)
    coef = torch.softmax(log_p, dim=1) * (log_p - log_q) * row_w
    loss = (coef * log_p).sum()
    if not want_grad:
        return loss, None
    g = z.sub_(lse).exp_().mul_(-coef.sum(dim=1, keepdim=True))
    return loss, g.scatter_add_(1, ids, coef)


def _padded_kl(log_p: Tensor, log_q: Tensor, shared: int, row_w: float,
               want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reverse KL over the shared ids of two heads of different sizes (see _shared_vocab.py), and its logits
    gradient over the whole student head, written over log_p."""
    ratio = log_p[:, :shared] - log_q[:, :shared]
    p = log_p.exp_()
    kl = (p[:, :shared] * ratio).sum(dim=1, keepdim=True)
    if not want_grad:
        return kl.sum() * row_w, None
    p_shared = p[:, :shared].sum(dim=1, keepdim=True)
    bonus = p[:, :shared] * ratio.add_(1.0)
    g = p.mul_(-(kl + p_shared))
    g[:, :shared] += bonus
    return kl.sum() * row_w, g.mul_(row_w)


def _hidden_grad(g: Tensor, w_mm: Tensor, mm: torch.dtype, out: torch.dtype) -> Tensor:
    if mm == out:
        return g @ w_mm
    if g.is_cuda:  # the half-precision GEMM with an fp32 output where torch offers it
        return product(g, w_mm, mm, out)
    return (g.to(mm) @ w_mm).to(out)  # CPU: no fp32 copy of the whole head per chunk


@dataclass(frozen=True)
class LossGrads:
    """What loss_and_grads (the `rowwise` whole_loss pass) returns, for an incoming gradient of 1."""

    loss: Tensor  # scalar, in the result dtype
    d_hidden: Tensor | None  # d loss / d hidden in hidden's [N, d] layout and dtype; None when not wanted
    d_weight: Tensor | None  # d loss / d weight [V, d] in weight's dtype; None when not wanted
    stats: OPDStats | None = None  # the diagnostics, when asked for (stats_k > 0)


def loss_and_grads(kind: str, inp: OPDInputs, weight: Tensor, t_weight: Tensor, k: int, tiling: Tiling,
                   mm_dtypes: tuple[torch.dtype, torch.dtype], *, want_hidden: bool,
                   want_weight: bool, stats_k: int = 0) -> LossGrads:
    """The loss and its gradients (LossGrads) in one pass per chunk of rows; with stats_k > 0 also the OPDStats with
    a top-`stats_k` overlap, from the same chunks (needs the sampled tokens in `inp`)."""
    n, out = inp.num_live, inp.out_dtype
    vocab, dim = weight.shape
    device = weight.device
    mm = mm_dtypes[0]
    loss = torch.zeros((), dtype=out, device=device)
    d_live = torch.empty((n, dim), dtype=out, device=device) if want_hidden else None
    d_weight = torch.zeros((vocab, dim), dtype=out, device=device) if want_weight else None
    want_grad = want_hidden or want_weight
    stats: list[OPDStats] | None = [] if stats_k else None
    with torch.no_grad():
        # the heads in their matmul dtypes once (no copy when they are stored in it), not once per chunk
        w_mm = weight.to(mm)
        t_mm = t_weight if kind == "at_ids" else t_weight.to(mm_dtypes[1])
        for r0, r1 in tiling.row_ranges(n):
            h = gather_rows(inp.hidden, inp.rows, r0, r1)
            z = logits_tile(h, w_mm, mm, out)
            part, g = _chunk_loss(kind, inp, z, t_mm, r0, r1, k, mm_dtypes[1], 1.0 / n, want_grad, stats, stats_k)
            loss += part
            if want_hidden:  # one GEMM over the whole vocabulary per chunk: the reference's own rounding
                d_live[r0:r1] = _hidden_grad(g, w_mm, mm, out)
            if want_weight:  # summed over chunks, so in the result dtype from unrounded operands
                d_weight.addmm_(g.T, h.to(out))
    d_hidden = live_to_dense(d_live, inp.hidden, inp.rows) if want_hidden else None
    return LossGrads(loss=loss, d_hidden=d_hidden, d_weight=d_weight.to(weight.dtype) if want_weight else None,
                     stats=concat_stats(stats, stats_k, out, device) if stats is not None else None)
