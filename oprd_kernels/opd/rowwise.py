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
from oprd_kernels.opd._tiles import Tiling, as_operand, gemm_dtype, logits_tile
from oprd_kernels.opd.diagnostics import OPDStats, concat_stats, stats_from_logits
from oprd_kernels.opd.stats import gather_rows

CHUNK_ELEMENTS = 1 << 24  # logits per chunk when row_block is not given (64 MB in fp32)


def row_tiling(rows: int, vocab: int, row_block: int | None) -> Tiling:
    """Whole-vocabulary tiles of row_block rows (default: ~CHUNK_ELEMENTS logits, at least one row)."""
    rb = row_block or max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return Tiling(max(1, min(rb, max(rows, 1))), max(vocab, 1))


@dataclass(frozen=True)
class _Workspace:
    """The chunk-sized buffers of one call, allocated once and reused by every chunk: the student's logits, the
    teacher's, and (full KL) the student's probabilities. A fresh chunk-sized tensor per chunk costs its page faults
    on a CPU (~1 s in 10 at 512 rows, V = 151,936), and every elementwise step below runs in place in these."""

    student: Tensor
    teacher: Tensor | None
    probs: Tensor | None

    @staticmethod
    def of(kind: str, rows: int, vocab: int, t_vocab: int, dtype: torch.dtype, device: torch.device) -> "_Workspace":
        def buf(cols: int) -> Tensor:
            return torch.empty(rows * cols, dtype=dtype, device=device)
        return _Workspace(buf(vocab), None if kind == "at_ids" else buf(t_vocab),
                          buf(max(vocab, t_vocab)) if kind == "full_vocab" else None)


def _view(buffer: Tensor, like: Tensor) -> Tensor:
    return buffer[: like.numel()].view_as(like)


def _log_softmax_(z: Tensor, probs: Tensor) -> None:
    """z -> log softmax(z) in place; `probs` (z's shape) receives softmax(z). Five passes, no allocation."""
    m = z.amax(dim=1, keepdim=True)
    p = torch.exp(z.sub_(m), out=probs)
    s = p.sum(dim=1, keepdim=True)
    p.div_(s)
    z.sub_(s.log_())


def _softmax_(z: Tensor) -> Tensor:
    """z -> softmax(z) in place; returns the log-sum-exp [rows, 1]."""
    m = z.amax(dim=1, keepdim=True)
    s = z.sub_(m).exp_().sum(dim=1, keepdim=True)
    z.div_(s)
    return m.add_(s.log_())


def _full_kl_chunk(z: Tensor, t: Tensor, probs: Tensor, shared: int, row_w: float,
                   want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The chunk's reverse KL and its logits gradient p (log p - log q - KL) (written into `probs`) from both models'
    raw logits, which are overwritten."""
    _log_softmax_(t, _view(probs, t))  # log q (the probabilities written there are not needed)
    p = _view(probs, z)
    _log_softmax_(z, p)  # log p, and p
    if not shared == z.shape[1] == t.shape[1]:
        return _padded_kl(z, t, p, shared, row_w, want_grad)
    ratio = t.neg_().add_(z)  # log p - log q
    kl = torch.bmm(p.unsqueeze(1), ratio.unsqueeze(2)).view(-1, 1)  # one dot product per row: no [rows, V] temp
    if not want_grad:
        return kl.sum() * row_w, None
    return kl.sum() * row_w, p.mul_(ratio.sub_(kl).mul_(row_w))


def _sparse_chunk(kind: str, inp: OPDInputs, z: Tensor, t: Tensor | None, r0: int, r1: int, k: int, shared: int,
                  row_w: float) -> tuple[Tensor, Tensor]:
    """Sampled-token, top-k or at-ids OPD on the chunk: its loss, and its logits gradient written over z (the
    teacher's logits are overwritten too)."""
    if kind == "sampled_token":
        ids = inp.tokens[r0:r1, None]
    elif kind == "topk":
        ids = ordered_topk(z[:, :shared], k)[1]  # among the ids both heads have, on the logits themselves
    else:
        ids = inp.ids[r0:r1]
    z_ids = z.gather(1, ids)
    if kind == "at_ids":
        log_q = inp.teacher_log_probs[r0:r1]
    else:
        t_ids = t.gather(1, ids)
        log_q = t_ids - _softmax_(t)
    log_p = z_ids - _softmax_(z)  # z is now p
    coef = torch.softmax(log_p, dim=1) * (log_p - log_q) * row_w
    loss = (coef * log_p).sum()
    return loss, z.mul_(-coef.sum(dim=1, keepdim=True)).scatter_add_(1, ids, coef)


def _padded_kl(log_p: Tensor, log_q: Tensor, p: Tensor, shared: int, row_w: float,
               want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reverse KL over the shared ids of two heads of different sizes (see _shared_vocab.py), and its logits
    gradient over the whole student head, written over p."""
    ratio = log_q[:, :shared].neg_().add_(log_p[:, :shared])
    kl = (p[:, :shared] * ratio).sum(dim=1, keepdim=True)
    if not want_grad:
        return kl.sum() * row_w, None
    p_shared = p[:, :shared].sum(dim=1, keepdim=True)
    bonus = p[:, :shared] * ratio.add_(1.0)
    g = p.mul_(-(kl + p_shared))
    g[:, :shared] += bonus
    return kl.sum() * row_w, g.mul_(row_w)


def _hidden_grad(g: Tensor, w_mm: Tensor, mm: torch.dtype, out: Tensor) -> None:
    """out = g @ w_mm in out's dtype."""
    if w_mm.dtype == out.dtype:  # fp32 heads, and 16-bit ones whose products run upcast (gemm_dtype)
        torch.matmul(g, w_mm, out=out)
    elif g.is_cuda:  # the half-precision GEMM with an fp32 output where torch offers it
        out.copy_(product(g, w_mm, mm, out.dtype))
    else:  # a CPU with native 16-bit products: no fp32 copy of the whole head per chunk
        out.copy_(g.to(mm) @ w_mm)


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
        # the heads in their products' dtypes once (no copy when they are stored in it), not once per chunk
        w_mm = as_operand(weight, mm, gemm_dtype(mm, out, device))
        t_gemm = gemm_dtype(mm_dtypes[1], out, device)
        t_mm = t_weight if kind == "at_ids" else as_operand(t_weight, mm_dtypes[1], t_gemm)
        shared = inp.shared_vocab or vocab
        ws = _Workspace.of(kind, tiling.row_block, vocab, t_weight.shape[0], out, device)
        for r0, r1 in tiling.row_ranges(n):
            h = gather_rows(inp.hidden, inp.rows, r0, r1)
            z = logits_tile(h, w_mm, mm, out, ws.student)
            t = None
            if kind != "at_ids":
                t = logits_tile(gather_rows(inp.teacher_hidden, inp.rows, r0, r1), t_mm, mm_dtypes[1], out,
                                ws.teacher)
            if stats is not None:  # from the logits, before they are overwritten
                stats.append(stats_from_logits(z, t, inp.tokens[r0:r1], shared, stats_k))
            if kind == "full_vocab":
                part, g = _full_kl_chunk(z, t, ws.probs, shared, 1.0 / n, want_grad)
            else:
                part, g = _sparse_chunk(kind, inp, z, t, r0, r1, k, shared, 1.0 / n)
            loss += part
            if want_hidden:  # one GEMM over the whole vocabulary per chunk
                _hidden_grad(g, w_mm, mm, d_live[r0:r1])
            if want_weight:  # summed over chunks, so in the result dtype from unrounded operands
                d_weight.addmm_(g.T, h.to(out))
    d_hidden = live_to_dense(d_live, inp.hidden, inp.rows) if want_hidden else None
    return LossGrads(loss=loss, d_hidden=d_hidden, d_weight=d_weight.to(weight.dtype) if want_weight else None,
                     stats=concat_stats(stats, stats_k, out, device) if stats is not None else None)
