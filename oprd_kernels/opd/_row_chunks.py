"""The per-chunk arithmetic of the `rowwise` backend (rowwise.py): from one chunk's whole-vocabulary logits of both
models to its loss and its logits gradient, in place in buffers allocated once per call.

Two layouts. The sparse kinds (sampled-token, top-k, at-ids) keep [rows, V] chunks, where the top-k runs along
contiguous rows. The full reverse KL keeps vocabulary-major [V, rows] chunks: their GEMM is W @ h.T, which MKL runs
~25% faster than h @ W.T at 256 to 512 rows and d = 1024 (an AVX2 EPYC, 105 against 83 GFLOP/s), and its gradient
products take the transposed chunk as it is. The KL needs only two chunk buffers: the student's probabilities and
the log-ratio are formed over the two models' logits, the teacher's normalisation using the student's buffer
before its GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._topk import ordered_topk
from oprd_kernels.opd._inputs import OPDInputs

DOT_BLOCK = 8192  # vocabulary rows per step of the KL's column dot products (a [block, rows] temporary)
# Vocabulary-major chunks keep their leading dimension a multiple of this many elements (64 bytes in fp32): MKL's
# gradient GEMM over an unaligned one ran 1.45x slower (all products 5.6 s against 3.9 s at 220 against 224 rows;
# benchmarks/lm_head_gemm_probe.py align under torch.profiler).
LEADING_ALIGN = 16


def padded_rows(rows: int) -> int:
    return -(-rows // LEADING_ALIGN) * LEADING_ALIGN


@dataclass(frozen=True)
class Workspace:
    """The chunk buffers of one call, reused by every chunk: a fresh chunk-sized tensor per chunk costs its page
    faults on a CPU (about 1 s in 10 at 512 rows, V = 151,936)."""

    student: Tensor
    teacher: Tensor | None

    @staticmethod
    def of(kind: str, rows: int, vocab: int, t_vocab: int, dtype: torch.dtype, device: torch.device) -> "Workspace":
        rows = padded_rows(rows)
        student = torch.empty(rows * max(vocab, t_vocab), dtype=dtype, device=device)  # also the teacher's scratch
        teacher = None if kind == "at_ids" else torch.empty(rows * t_vocab, dtype=dtype, device=device)
        return Workspace(student, teacher)


def chunk_view(buffer: Tensor, shape: tuple[int, int]) -> Tensor:
    """A contiguous [rows, cols] view of the buffer's start."""
    return buffer[: shape[0] * shape[1]].view(shape)


def vocab_major_view(buffer: Tensor, vocab: int, rows: int) -> Tensor:
    """A [vocab, rows] view of the buffer with its leading dimension padded to LEADING_ALIGN."""
    return buffer.as_strided((vocab, rows), (padded_rows(rows), 1))


def _softmax_(z: Tensor, dim: int) -> Tensor:
    """z -> softmax(z) along `dim` in place; returns the log-sum-exp (keepdim)."""
    m = z.amax(dim=dim, keepdim=True)
    s = z.sub_(m).exp_().sum(dim=dim, keepdim=True)
    z.div_(s)
    return m.add_(s.log_())


def sparse_chunk(kind: str, inp: OPDInputs, z: Tensor, t: Tensor | None, r0: int, r1: int, k: int, shared: int,
                 row_w: float) -> tuple[Tensor, Tensor]:
    """Sampled-token, top-k or at-ids OPD on a [rows, V] chunk: its loss, and its logits gradient written over z
    (the teacher's logits are overwritten too)."""
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
        log_q = t_ids - _softmax_(t, 1)
    log_p = z_ids - _softmax_(z, 1)  # z is now p
    coef = torch.softmax(log_p, dim=1) * (log_p - log_q) * row_w
    loss = (coef * log_p).sum()
    return loss, z.mul_(-coef.sum(dim=1, keepdim=True)).scatter_add_(1, ids, coef)


def _column_dots(a: Tensor, b: Tensor) -> Tensor:
    """sum_v a[v, r] * b[v, r] for [V, rows] a and b, in vocabulary blocks (no [V, rows] temporary)."""
    out = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
    for v0 in range(0, a.shape[0], DOT_BLOCK):
        out += (a[v0:v0 + DOT_BLOCK] * b[v0:v0 + DOT_BLOCK]).sum(dim=0)
    return out


def teacher_log_probs_(tt: Tensor, scratch: Tensor | None) -> None:
    """tt [V_t, rows] teacher logits -> log q in place; `scratch` (at least tt's size, e.g. the student's buffer
    before its GEMM) takes the exponentials, else a temporary does."""
    m_t = tt.amax(dim=0)
    tt.sub_(m_t)
    e = torch.exp(tt, out=chunk_view(scratch, tt.shape)) if scratch is not None else torch.exp(tt)
    tt.sub_(e.sum(dim=0).log_())


def full_kl_chunk(zt: Tensor, log_qt: Tensor, shared: int, row_w: float,
                  want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The reverse KL of a vocabulary-major chunk (zt [V, rows] student logits, log_qt [V_t, rows] the teacher's
    log-probabilities; both overwritten) and its logits gradient row_w * p (log p - log q - KL), transposed, written
    over zt.

    With c = max_v z and S = sum_v exp(z - c): log p = z - c - log S. The log-ratio is formed in the teacher's
    buffer as (z - c) - log q - log S, so that the student's buffer can turn into row_w * p in place; then
    D = sum_v (row_w p)(log p - log q) = row_w KL, and the gradient is (row_w p)(log p - log q - D / row_w)."""
    if not shared == zt.shape[0] == log_qt.shape[0]:
        return _padded_kl(zt, log_qt, shared, row_w, want_grad)
    m = zt.amax(dim=0)
    zt.sub_(m)
    u = log_qt.neg_().add_(zt)  # (z - c) - log q
    s = zt.exp_().sum(dim=0)
    ratio = u.sub_(s.log())  # log p - log q, per element: KL = sum p u - log S would cancel two ~log |V| terms
    wp = zt.div_(s / row_w)  # row_w * p
    d = _column_dots(wp, ratio)  # row_w * KL_r
    if not want_grad:
        return d.sum(), None
    return d.sum(), wp.mul_(ratio.sub_(d / row_w))


def _padded_kl(zt: Tensor, log_q: Tensor, shared: int, row_w: float,
               want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """full_kl_chunk for heads of different sizes: the KL over the shared ids [0, S), each model normalised over its
    own head (_shared_vocab.py has the formulas); written plainly, with temporaries (a rare case)."""
    log_p = torch.log_softmax(zt, dim=0)
    ratio = log_p[:shared] - log_q[:shared]
    p = log_p.exp()
    kl = (p[:shared] * ratio).sum(dim=0)
    if not want_grad:
        return kl.sum() * row_w, None
    p_shared = p[:shared].sum(dim=0)
    bonus = p[:shared] * ratio.add_(1.0)
    g = p.mul_(-(kl + p_shared))
    g[:shared] += bonus
    return kl.sum() * row_w, g.mul_(row_w)
