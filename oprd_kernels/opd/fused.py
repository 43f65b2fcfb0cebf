"""Fused OPD losses: sampled-token, top-k and full-vocabulary OPD, and the generalised JSD of TRL's GKD, from the final
hidden states and the LM-head weights, without ever materialising the [N, |V|] logits (Cut Cross-Entropy /
Liger-style).

Same meaning as oprd_kernels.reference's sampled_token_opd_loss, topk_opd_loss, full_vocab_opd_loss and
generalized_jsd_loss applied to student_logits = hidden @ weight.T and teacher_logits = teacher_hidden @
teacher_weight.T. The student's logits are computed tile by tile in the LM head's own precision and every softmax
quantity is taken in float32 (float64 for float64 inputs); the gradients of `hidden` and `weight` are produced
during the forward pass, right after the statistics pass, and scaled by the incoming gradient in backward. The
teacher is a constant.

Cost with vocabulary tiles (`chunked`, `triton`): the student's logits are computed twice (statistics, then gradient)
and the teacher's once (twice for the full KL); memory is one tile of logits plus O(N * k) statistics, the
hidden-state gradient in float32, and one vocabulary block's weight gradient in float32. With `rowwise`, each chunk of
whole rows is computed once (rowwise.py). The generalised JSD with vocabulary tiles needs the normalised
probabilities of both models before its loss, so it takes three passes over both heads (statistics, loss, gradient):
five student LM-head products (three of logits, two gradient ones) and three teacher ones; `rowwise` takes one pass
per chunk as for the full KL; `triton` has no JSD pass and runs `chunked` instead (opd/_passes.py). A graph built by
these losses supports one backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._validation import fail
from oprd_kernels.opd._fused_call import KINDS, FusedCall, _FusedOPD, prepare_call
from oprd_kernels.opd.custom_ops import traced_fused_opd
from oprd_kernels.opd.diagnostics import OPDStats
from oprd_kernels.reference.opd import check_beta

__all__ = ["KINDS", "FusedCall", "fused_full_vocab_opd_loss", "fused_generalized_jsd_loss", "fused_opd_loss_and_stats",
           "fused_opd_loss_at_ids", "fused_sampled_token_opd_loss", "fused_topk_opd_loss"]


def _fused(func: str, kind: str, hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
           tokens: Tensor | None, mask: Tensor | None, k: int, row_block: int | None, vocab_block: int | None,
           backend: str | None, stats_k: int = 0, beta: float = 0.5):
    args = (func, kind, hidden, weight, teacher_hidden, teacher_weight, tokens, mask, k, row_block, vocab_block,
            backend, stats_k, beta)
    if torch.compiler.is_compiling():  # the custom op: no Python dispatch inside a compiled graph
        result = traced_fused_opd(*args)
    else:
        grad_on = torch.is_grad_enabled()
        # the matmul dtypes follow an enclosing autocast; the passes then run with it off
        wants = [grad_on and getattr(t, "requires_grad", False) for t in (hidden, weight)]  # validated in prepare
        call = prepare_call(*args, *wants)
        with torch.autocast(hidden.device.type, enabled=False):
            result = _FusedOPD.apply(hidden, weight, teacher_hidden.detach(), teacher_weight.detach(), call)
    if not stats_k:
        return result
    return result[0], OPDStats.of_tuple(result[1:], stats_k)


STATS_KINDS = ("sampled_token", "topk", "full_vocab")


def fused_opd_loss_and_stats(kind: str, hidden: Tensor, weight: Tensor, teacher_hidden: Tensor,
                             teacher_weight: Tensor, tokens: Tensor, mask: Tensor | None = None, *, k: int = 16,
                             stats_k: int = 16, row_block: int | None = None, vocab_block: int | None = None,
                             backend: str | None = None) -> tuple[Tensor, OPDStats]:
    """One of the fused OPD losses (`kind`: "sampled_token", "topk" with `k`, "full_vocab") and its diagnostics
    (OPDStats, diagnostics.py: the reward at the sampled `tokens`, both entropies, the top-`stats_k` overlap), taken
    from the loss's own statistics passes. The loss, its gradient and the other arguments are those of
    fused_sampled_token_opd_loss / fused_topk_opd_loss / fused_full_vocab_opd_loss; the statistics are detached
    device tensors, so reading them is the caller's only host synchronisation for them."""
    func = "fused_opd_loss_and_stats"
    if kind not in STATS_KINDS:
        raise fail(ValueError, func, "kind", f"must be one of {list(STATS_KINDS)}", repr(kind))
    return _fused(func, kind, hidden, weight, teacher_hidden, teacher_weight, tokens, mask, k if kind == "topk" else 1,
                  row_block, vocab_block, backend, stats_k=stats_k)


def fused_opd_loss_at_ids(hidden: Tensor, weight: Tensor, ids: Tensor, teacher_log_probs: Tensor,
                          mask: Tensor | None = None, *, row_block: int | None = None, vocab_block: int | None = None,
                          backend: str | None = None) -> Tensor:
    """The OPD update phase with the teacher side precomputed (reference.opd_loss_at_ids), fused: ids [..., k] are
    the sampled tokens (k = 1: sampled-token OPD) or the student's top-k ids from an earlier no-grad pass (top-k OPD),
    teacher_log_probs [..., k] the teacher's log-probs there (e.g. from lm_head_stats). Other arguments as
    fused_sampled_token_opd_loss."""
    return _fused("fused_opd_loss_at_ids", "at_ids", hidden, weight, ids, teacher_log_probs, None, mask, 1,
                  row_block, vocab_block, backend)


def fused_sampled_token_opd_loss(hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                                 tokens: Tensor, mask: Tensor | None = None, *, row_block: int | None = None,
                                 vocab_block: int | None = None, backend: str | None = None) -> Tensor:
    """Sampled-token OPD (reference.sampled_token_opd_loss) on the logits hidden @ weight.T, fused.

    hidden: [N, d] or [B, T, d] student final (post-norm) states aligned with `tokens`; weight: [V, d] LM head;
    teacher_hidden: the teacher's states at the same positions [.., d_t]; teacher_weight: [V, d_t]; tokens: int64
    sampled tokens; mask: response positions. row_block/vocab_block: tile shape (defaults by device; `rowwise` uses
    whole-vocabulary rows and ignores vocab_block). backend: "chunked", "rowwise", "triton" or "auto" (default:
    $OPRD_OPD_BACKEND, else triton on CUDA when it can run, else chunked there; on CPU rowwise, or chunked for a
    bf16/fp16 weight).
    """
    return _fused("fused_sampled_token_opd_loss", "sampled_token", hidden, weight, teacher_hidden, teacher_weight,
                  tokens, mask, 1, row_block, vocab_block, backend)


def fused_topk_opd_loss(hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                        mask: Tensor | None = None, *, k: int = 16, row_block: int | None = None,
                        vocab_block: int | None = None, backend: str | None = None) -> Tensor:
    """Top-k OPD with the reference code's semantics (reference.topk_opd_loss), fused; arguments as
    fused_sampled_token_opd_loss."""
    return _fused("fused_topk_opd_loss", "topk", hidden, weight, teacher_hidden, teacher_weight, None, mask, k,
                  row_block, vocab_block, backend)


def fused_full_vocab_opd_loss(hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                              mask: Tensor | None = None, *, row_block: int | None = None,
                              vocab_block: int | None = None, backend: str | None = None) -> Tensor:
    """Exact reverse KL (reference.full_vocab_opd_loss), analytic gradient, fused; arguments as
    fused_sampled_token_opd_loss."""
    return _fused("fused_full_vocab_opd_loss", "full_vocab", hidden, weight, teacher_hidden, teacher_weight, None,
                  mask, 1, row_block, vocab_block, backend)


def fused_generalized_jsd_loss(hidden: Tensor, weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
                               mask: Tensor | None = None, *, beta: float = 0.5, row_block: int | None = None,
                               vocab_block: int | None = None, backend: str | None = None) -> Tensor:
    """The generalised JSD of TRL's GKD trainer (reference.generalized_jsd_loss; beta in [0, 1], TRL's default 0.5:
    beta = 0 is the forward KL(q || p), beta = 1 the reverse KL of fused_full_vocab_opd_loss, whose passes it then
    runs), analytic gradient, fused; other arguments as fused_sampled_token_opd_loss (`triton` falls back to
    `chunked`: no Triton JSD pass)."""
    func = "fused_generalized_jsd_loss"
    beta = check_beta(func, beta)
    return _fused(func, "full_vocab" if beta == 1.0 else "jsd", hidden, weight, teacher_hidden, teacher_weight, None,
                  mask, 1, row_block, vocab_block, backend, beta=beta)
