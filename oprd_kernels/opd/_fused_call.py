"""The fused OPD losses' engine: the validated call (`prepare_call` -> `FusedCall`), the loss with its gradients for
an incoming gradient of 1 computed in the forward pass (`run_call`), and the autograd Function over it (`_FusedOPD`).
fused.py's public losses use it eagerly, and opd/custom_ops.py as the custom op's body (fused.py explains the
passes and their cost)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._validation import as_int, fail
from oprd_kernels.opd._gradient import LogitGradient
from oprd_kernels.opd._inputs import OPDInputs, check_at_ids_inputs, check_opd_inputs
from oprd_kernels.opd._passes import Passes, resolve_passes
from oprd_kernels.opd._shared_vocab import generalized_jsd, head_statistics, reverse_kl
from oprd_kernels.opd._tiles import Tiling, check_blocks, choose_tiling, matmul_dtype
from oprd_kernels.opd.diagnostics import OPDStats, concat_stats, stats_from_heads
from oprd_kernels.opd.rowwise import row_tiling

KINDS = ("sampled_token", "topk", "full_vocab", "at_ids", "jsd")  # jsd: the generalised JSD for 0 <= beta < 1


def _loss_and_gradient(passes: Passes, call: "FusedCall", weight: Tensor,
                       t_weight: Tensor) -> tuple[Tensor, list[tuple[slice, LogitGradient]], OPDStats | None]:
    """The loss (a scalar in the result dtype), its logits gradient (for an incoming 1) as (rows of the student head,
    gradient) parts (one part, unless the heads differ in size: _shared_vocab.py), and, with `call.stats_k`, the
    OPDStats from the same passes (diagnostics.py)."""
    kind, inp, k, tiling, mm_dtypes, stats_k = call.kind, call.inp, call.k, call.tiling, call.mm_dtypes, call.stats_k
    out, n = inp.out_dtype, inp.num_live
    shared = inp.shared_vocab or weight.shape[0]
    row_w = torch.full((n,), 1.0 / n, dtype=out, device=weight.device)
    s_args = (inp.hidden, weight, inp.rows, tiling, mm_dtypes[0], out, shared)
    t_args = (inp.teacher_hidden, t_weight, inp.rows, tiling, mm_dtypes[1], out)
    if kind == "full_vocab":
        st, parts = reverse_kl(passes, inp.hidden, weight, inp.teacher_hidden, t_weight, inp.rows, tiling, mm_dtypes,
                               out, shared, row_w)
        stats = None
        if stats_k:  # the joint KL pass keeps no entropy or top-k: one statistics pass per head
            tokens = inp.tokens[:, None]
            stats = stats_from_heads(head_statistics(passes, *s_args, ids=tokens, topk=stats_k, entropy=True),
                                     head_statistics(passes, *t_args, shared, ids=tokens, topk=stats_k, entropy=True),
                                     stats_k)
        return (row_w * st.kl).sum(), parts, stats
    if kind == "jsd":
        jsd, parts = generalized_jsd(passes, inp.hidden, weight, inp.teacher_hidden, t_weight, inp.rows, tiling,
                                     mm_dtypes, out, shared, row_w, call.beta)
        return (row_w * jsd).sum(), parts, None
    want = stats_k > 0
    if kind in ("sampled_token", "at_ids"):
        ids = inp.tokens[:, None] if kind == "sampled_token" else inp.ids
        student = head_statistics(passes, *s_args, ids=ids, topk=stats_k, entropy=want)
        log_p = student.at_ids - student.logsumexp[:, None]
    else:
        student = head_statistics(passes, *s_args, topk=max(k, stats_k), entropy=want,
                                  ids=inp.tokens[:, None] if want else None)
        ids = student.topk_ids[:, :k]
        log_p = student.topk_values[:, :k] - student.logsumexp[:, None]
    teacher = None
    if kind == "at_ids":
        log_q = inp.teacher_log_probs
    elif want:  # the teacher's top-k and entropy in the same pass, its logits at the sampled tokens too
        t_ids = ids if kind == "sampled_token" else torch.cat([ids, inp.tokens[:, None]], dim=1)
        teacher = head_statistics(passes, *t_args, shared, ids=t_ids, topk=stats_k, entropy=True)
        log_q = teacher.at_ids[:, :ids.shape[1]] - teacher.logsumexp[:, None]
    else:
        teacher = passes.logit_stats(*t_args, ids=ids)
        log_q = teacher.at_ids - teacher.logsumexp[:, None]
    # loss_t = sum_k sg(w_k (log p_k - log q_k)) * log p_k, w = softmax over the k student log-probs; for one id
    # (sampled-token OPD) w = 1 and this is -sg(log q - log p) * log p
    coef = torch.softmax(log_p, dim=1) * (log_p - log_q) * row_w[:, None]
    loss = (coef * log_p).sum()
    stats = stats_from_heads(student, teacher, stats_k, teacher_token=0 if kind == "sampled_token" else k) if want \
        else None
    return loss, [(slice(None), LogitGradient(student.logsumexp, dense=-coef.sum(1), ids=ids, sparse=coef))], stats


def _backprop(passes: Passes, inp: OPDInputs, weight: Tensor, parts, tiling, mm_dtypes, want_h: bool,
              want_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """d hidden (summed over the parts) and d weight (the parts' row ranges, in order) of the logits gradient."""
    pieces = [passes.backprop_logits(inp.hidden, weight[head_rows], inp.rows, grad, tiling, mm_dtypes, inp.out_dtype,
                                     want_hidden=want_h, want_weight=want_w) for head_rows, grad in parts]
    d_hidden = d_weight = None
    if want_h:
        d_hidden = pieces[0].hidden
        for extra in pieces[1:]:
            d_hidden = d_hidden.add_(extra.hidden)
    if want_w:
        d_weight = pieces[0].weight if len(pieces) == 1 else torch.cat([piece.weight for piece in pieces])
    return d_hidden, d_weight


@dataclass(frozen=True)
class FusedCall:
    """What _FusedOPD.forward is called with besides the four tensors autograd tracks (built in _fused)."""

    passes: Passes
    kind: str  # one of KINDS
    inp: OPDInputs
    k: int  # top-k's k (1 otherwise)
    tiling: Tiling
    mm_dtypes: tuple[torch.dtype, torch.dtype]  # the LM heads' matmul dtypes: (student, teacher)
    want_hidden: bool  # d loss / d hidden is wanted
    want_weight: bool  # d loss / d weight is wanted
    stats_k: int = 0  # > 0: also return the OPDStats, with a top-stats_k overlap (needs inp.tokens)
    beta: float = 0.5  # the generalised JSD's weight, in [0, 1) (kind "jsd"; ignored by the other kinds)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"FusedCall: kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.mm_dtypes) != 2:
            raise ValueError(f"FusedCall: mm_dtypes must be (student, teacher), got {self.mm_dtypes!r}")
        if self.stats_k and (self.kind in ("at_ids", "jsd") or self.inp.tokens is None):
            raise ValueError("FusedCall: stats need the sampled tokens (not the at_ids or jsd kinds)")
        if self.kind == "jsd" and not 0.0 <= self.beta < 1.0:
            raise ValueError(f"FusedCall: the jsd kind needs 0 <= beta < 1 (beta = 1 is full_vocab), got {self.beta!r}")


def run_call(call: FusedCall, hidden: Tensor, weight: Tensor, teacher_weight: Tensor):
    """(loss, d_hidden or None, d_weight or None, OPDStats tuple or None): the loss with its gradients for an
    incoming gradient of 1, computed in the forward pass (what _FusedOPD and the custom op both run)."""
    inp, passes, want_h, want_w = call.inp, call.passes, call.want_hidden, call.want_weight
    stats = None
    if inp.num_live == 0:
        loss = torch.zeros((), dtype=inp.out_dtype, device=hidden.device)
        grads = (torch.zeros_like(hidden) if want_h else None, torch.zeros_like(weight) if want_w else None)
        stats = concat_stats([], call.stats_k, inp.out_dtype, hidden.device) if call.stats_k else None
    elif passes.whole_loss is not None:
        whole = passes.whole_loss(call.kind, inp, weight, teacher_weight, call.k, call.tiling, call.mm_dtypes,
                                  want_hidden=want_h, want_weight=want_w, stats_k=call.stats_k, beta=call.beta)
        grads = (whole.d_hidden.view(hidden.shape) if whole.d_hidden is not None else None, whole.d_weight)
        loss, stats = whole.loss, whole.stats
    else:
        loss, parts, stats = _loss_and_gradient(passes, call, weight, teacher_weight)
        d_hidden = d_weight = None
        if want_h or want_w:
            d_hidden, d_weight = _backprop(passes, inp, weight, parts, call.tiling, call.mm_dtypes, want_h, want_w)
        grads = (d_hidden.view(hidden.shape) if d_hidden is not None else None, d_weight)
    values = None if stats is None else tuple(t.detach() for t in stats.as_tuple())
    return loss, grads[0], grads[1], values


def scaled(gradient: Tensor | None, grad_out: Tensor, in_place: bool = False) -> Tensor | None:
    """A forward-computed gradient times the incoming gradient (taken in float32, float64 for float64)."""
    if gradient is None:
        return None
    scale = grad_out.to(torch.float32 if grad_out.dtype != torch.float64 else torch.float64).to(gradient.dtype)
    return gradient.mul_(scale) if in_place else gradient * scale


class _FusedOPD(torch.autograd.Function):
    """Returns the loss, followed by the four OPDStats tensors when call.stats_k > 0 (not differentiable)."""

    @staticmethod
    def forward(ctx, hidden, weight, teacher_hidden, teacher_weight, call: FusedCall):
        loss, d_hidden, d_weight, values = run_call(call, hidden, weight, teacher_weight)
        ctx.grads = (d_hidden, d_weight)
        if values is None:
            return loss
        ctx.mark_non_differentiable(*values)
        return (loss, *values)

    @staticmethod
    def backward(ctx, grad_out, *unused_stats_grads):
        if ctx.grads is None:
            raise RuntimeError("fused OPD losses compute their gradient once, in the forward pass: a second backward "
                               "through the same graph (retain_graph=True) is not supported")
        d_hidden, d_weight = ctx.grads
        ctx.grads = None
        return scaled(d_hidden, grad_out, in_place=True), scaled(d_weight, grad_out, in_place=True), None, None, None


def prepare_call(func: str, kind: str, hidden: Tensor, weight: Tensor, teacher_hidden: Tensor,
                 teacher_weight: Tensor, tokens: Tensor | None, mask: Tensor | None, k: int, row_block: int | None,
                 vocab_block: int | None, backend: str | None, stats_k: int, beta: float, want_hidden: bool,
                 want_weight: bool) -> FusedCall:
    """The validated call: inputs, backend passes, tiling and matmul dtypes (the teacher side of "at_ids" arrives
    precomputed: (ids, log-probs) in the teacher's two slots; `beta` is checked by the public function)."""
    check_blocks(func, row_block, vocab_block)
    if kind == "at_ids":
        inp = check_at_ids_inputs(func, hidden, weight, teacher_hidden, teacher_weight, mask)
    else:
        inp = check_opd_inputs(func, hidden, weight, teacher_hidden, teacher_weight, tokens, mask,
                               needs_tokens=kind == "sampled_token" or stats_k != 0)
    vocab = weight.shape[0]
    shared = inp.shared_vocab or vocab
    for arg, value, asked in (("k", k, kind == "topk"), ("stats_k", stats_k, stats_k != 0)):
        if asked and (as_int(value) is None or not 1 <= value <= shared):
            raise fail(ValueError, func, arg, f"must be an int in [1, V = {shared}] (the ids both heads have)",
                       repr(value))
    k, stats_k = as_int(k), as_int(stats_k)
    passes = resolve_passes(func, backend, hidden.device, weight.dtype)
    tiling = (row_tiling(inp.num_live, vocab, row_block) if passes.whole_loss is not None else
              choose_tiling(inp.num_live, vocab, hidden.device, row_block, vocab_block))
    mm_dtypes = (matmul_dtype(hidden, weight),
                 matmul_dtype(hidden, weight) if kind == "at_ids" else matmul_dtype(teacher_hidden, teacher_weight))
    return FusedCall(passes=passes, kind=kind, inp=inp, k=k, tiling=tiling, mm_dtypes=mm_dtypes,
                     want_hidden=want_hidden, want_weight=want_weight, stats_k=stats_k, beta=beta)
