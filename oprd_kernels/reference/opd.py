"""Reference on-policy distillation (OPD) losses, as the OPRD paper's reference code computes them (PAPER_NOTES §1).

Common inputs (logits already aligned with the tokens: position t of the logits predicts tokens[t]):
    student_logits: [N, V] or [B, T, V] floating, with gradient (the student's LM-head output).
    teacher_logits: the same positions, any floating dtype; a constant (no gradient flows into it). Its vocabulary
        may have another size V_t (padded heads: Qwen2.5-1.5B has 151,936 rows, Qwen2.5-7B 152,064, one tokenizer):
        each model normalises over its own head, and the losses compare the shared ids [0, min(V_s, V_t)).
    mask: None (all positions) or a bool/0-1 tensor of shape [N] or [B, T] marking response tokens; whatever sits
        at masked positions (padding ids such as -100, non-finite logits) is ignored.
All the losses are token-means over the mask: sum_t m_t * loss_t / sum_t m_t (0 when the mask is empty). They are
computed in float32 (float64 when either logits tensor is float64) and return a scalar of that dtype. Every one
of them materialises [N, V] log-probabilities: they are the faithful, memory-hungry baselines the fused losses are
measured against.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from oprd_kernels._position_checks import check_id_range, check_mask
from oprd_kernels._topk import ordered_topk
from oprd_kernels._validation import as_int, check_float_tensor, check_same_device, describe, fail, result_dtype


def _check_logits(func: str, student_logits: object, teacher_logits: object) -> int:
    """Validate both logits tensors; returns the shared vocabulary size min(V_s, V_t)."""
    check_float_tensor(func, "student_logits", student_logits)
    check_float_tensor(func, "teacher_logits", teacher_logits)
    if student_logits.dim() not in (2, 3) or student_logits.shape[-1] == 0:
        raise fail(ValueError, func, "student_logits", "must have shape [N, V] or [B, T, V] with V >= 1",
                   describe(student_logits))
    positions = student_logits.shape[:-1]
    if teacher_logits.dim() != student_logits.dim() or teacher_logits.shape[:-1] != positions or \
            teacher_logits.shape[-1] == 0:
        raise fail(ValueError, func, "teacher_logits", f"must have student_logits' positions {tuple(positions)} "
                   f"followed by the teacher's vocabulary size (V_t >= 1)", describe(teacher_logits))
    check_same_device(func, "teacher_logits", teacher_logits, student_logits.device)
    return min(student_logits.shape[-1], teacher_logits.shape[-1])


def _check_tokens(func: str, tokens: object, positions: torch.Size, vocab: int, mask: Tensor | None,
                  device: torch.device, *, on_device: bool = False) -> Tensor:
    """int64 token ids; only unmasked positions must be in [0, V): padding ids (e.g. -100) may sit under the mask."""
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64:
        raise fail(TypeError, func, "tokens", "must be an int64 tensor", describe(tokens))
    if tokens.shape != positions:
        raise fail(ValueError, func, "tokens", f"must have the positions' shape {tuple(positions)}", describe(tokens))
    check_same_device(func, "tokens", tokens, device)
    check_id_range(func, "tokens", tokens, vocab, mask, on_device=on_device)
    return tokens if mask is None else tokens.masked_fill(~mask.bool(), 0)


def masked_token_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """sum_t m_t v_t / sum_t m_t over all positions; 0 (with a zero gradient) when no position is selected.
    Masked positions are selected out, not multiplied by 0, so garbage (inf/NaN) under the mask cannot leak in."""
    if mask is None:
        return values.sum() / max(values.numel(), 1)
    keep = mask.bool()
    return torch.where(keep, values, torch.zeros_like(values)).sum() / keep.sum().clamp_min(1).to(values.dtype)


def _log_softmax(logits: Tensor, dtype: torch.dtype) -> Tensor:
    return F.log_softmax(logits.to(dtype), dim=-1)


def sampled_token_opd_loss(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor,
                           mask: Tensor | None = None) -> Tensor:
    """Sampled-token (top-1) OPD: REINFORCE on the per-token reward r_t = log q_t(y_t) - log p_t(y_t).

    loss = token-mean of -sg(r_t) * log p_t(y_t). Its gradient is -r_t * grad log p_t(y_t), the on-policy PPO
    gradient with ratio 1 (clipping never acts with one update per batch). `tokens`: int64 [N] or [B, T], the
    sampled response tokens y_t.
    """
    func = "sampled_token_opd_loss"
    shared = _check_logits(func, student_logits, teacher_logits)
    positions = student_logits.shape[:-1]
    mask = check_mask(func, "mask", mask, positions, student_logits.device)
    tokens = _check_tokens(func, tokens, positions, shared, mask, student_logits.device)
    index = tokens.unsqueeze(-1)
    dtype = result_dtype(student_logits.dtype, teacher_logits.dtype)
    log_p = _log_softmax(student_logits, dtype).gather(-1, index).squeeze(-1)
    with torch.no_grad():
        log_q = _log_softmax(teacher_logits, dtype).gather(-1, index).squeeze(-1)
        reward = log_q - log_p
    return masked_token_mean(-reward * log_p, mask)


def topk_opd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, *,
                  k: int = 16) -> Tensor:
    """Top-k OPD exactly as the reference code does it (verl, strategy `only_stu`, weights `student_p`).

    1. ids = the k largest student logits per position (no gradient), ties to the smaller id (oprd_kernels._topk);
    2. log q_k = teacher log-probs at ids, normalised over the full vocabulary;
    3. w_k = softmax of the k student log-probs (detached); advantage A_k = -w_k (log p_k - log q_k), detached;
    4. loss_t = sum_k -A_k * log p_k with log p_k from a full-vocabulary log_softmax; token-mean over the mask.
    A score-function gradient sum_k w_k (log p_k - log q_k) grad log p_k, not the KL's analytic gradient; the
    log-ratio is not renormalised on the top-k set. k must be in [1, min(V_s, V_t)].
    """
    func = "topk_opd_loss"
    vocab = _check_logits(func, student_logits, teacher_logits)
    if as_int(k) is None or not 1 <= k <= vocab:
        raise fail(ValueError, func, "k", f"must be an int in [1, V = {vocab}] (the shared vocabulary)", repr(k))
    k = as_int(k)
    mask = check_mask(func, "mask", mask, student_logits.shape[:-1], student_logits.device)
    dtype = result_dtype(student_logits.dtype, teacher_logits.dtype)
    log_p_all = _log_softmax(student_logits, dtype)
    with torch.no_grad():
        ids = ordered_topk(student_logits.detach()[..., :vocab], k)[1]  # among the ids the teacher has
        log_q = _log_softmax(teacher_logits, dtype).gather(-1, ids)
    log_p = log_p_all.gather(-1, ids)
    with torch.no_grad():
        w = torch.softmax(log_p, dim=-1)
        advantage = -w * (log_p - log_q)
    return masked_token_mean((-advantage * log_p).sum(-1), mask)


def full_vocab_opd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Exact reverse KL per position, sum_v p_t(v) (log p_t(v) - log q_t(v)), token-mean over the mask; with
    vocabularies of different sizes the sum runs over the shared ids (each distribution normalised over its head).

    Differentiated analytically by autograd (not a score-function estimate).
    """
    func = "full_vocab_opd_loss"
    shared = _check_logits(func, student_logits, teacher_logits)
    mask = check_mask(func, "mask", mask, student_logits.shape[:-1], student_logits.device)
    dtype = result_dtype(student_logits.dtype, teacher_logits.dtype)
    log_p = _log_softmax(student_logits, dtype)[..., :shared]
    log_q = _log_softmax(teacher_logits.detach(), dtype)[..., :shared]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return masked_token_mean(kl, mask)


def check_beta(func: str, beta: object) -> float:
    """The generalised JSD's interpolation weight as a float in [0, 1] (a bool is no number here)."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise fail(TypeError, func, "beta", "must be a real number in [0, 1]", describe(beta))
    if not 0.0 <= float(beta) <= 1.0:  # NaN fails too
        raise fail(ValueError, func, "beta", "must be in [0, 1]", repr(beta))
    return float(beta)


def generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, *,
                         beta: float = 0.5) -> Tensor:
    """The generalised Jensen-Shannon divergence of TRL's GKD trainer (`GKDTrainer.generalized_jsd_loss` at
    temperature 1; its default beta = 0.5), token-mean over the mask. With the mixture m = (1 - beta) p + beta q:
        0 < beta < 1: beta * KL(q || m) + (1 - beta) * KL(p || m)
        beta = 0:     KL(q || p), the forward KL      beta = 1: KL(p || q), the reverse KL (full_vocab_opd_loss)
    (the two ends are TRL's special cases: the mixture formula itself vanishes there). Heads of different sizes:
    each distribution normalised over its own head, the sums over the shared ids. The teacher is a constant."""
    func = "generalized_jsd_loss"
    beta = check_beta(func, beta)
    shared = _check_logits(func, student_logits, teacher_logits)
    mask = check_mask(func, "mask", mask, student_logits.shape[:-1], student_logits.device)
    dtype = result_dtype(student_logits.dtype, teacher_logits.dtype)
    log_p = _log_softmax(student_logits, dtype)[..., :shared]
    log_q = _log_softmax(teacher_logits.detach(), dtype)[..., :shared]
    if beta == 0.0:
        div = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif beta == 1.0:
        div = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
        div = beta * (log_q.exp() * (log_q - log_m)).sum(-1) + (1 - beta) * (log_p.exp() * (log_p - log_m)).sum(-1)
    return masked_token_mean(div, mask)


def opd_loss_at_ids(student_logits: Tensor, ids: Tensor, teacher_log_probs: Tensor,
                    mask: Tensor | None = None) -> Tensor:
    """The update phase of the reference code's OPD, with the teacher side precomputed (as verl's actor update sees
    it): ids [..., k] are the sampled tokens (k = 1) or the student's top-k ids from a no-grad pass, and
    teacher_log_probs [..., k] the teacher's full-vocabulary log-probs there (constants).

    loss = token-mean of sum_k sg(w_k (log p_k - log q_k)) * log p_k with w = softmax over the k student log-probs
    (w = 1 for k = 1): sampled_token_opd_loss for the sampled tokens, topk_opd_loss for the student's top-k ids.
    """
    func = "opd_loss_at_ids"
    check_float_tensor(func, "student_logits", student_logits)
    if student_logits.dim() not in (2, 3) or student_logits.shape[-1] == 0:
        raise fail(ValueError, func, "student_logits", "must have shape [N, V] or [B, T, V] with V >= 1",
                   describe(student_logits))
    positions, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    mask = check_mask(func, "mask", mask, positions, student_logits.device)
    ids = check_ids_and_log_probs(func, ids, teacher_log_probs, positions, vocab, mask, student_logits.device)
    dtype = result_dtype(student_logits.dtype, teacher_log_probs.dtype)
    log_p = _log_softmax(student_logits, dtype).gather(-1, ids)
    with torch.no_grad():
        log_q = teacher_log_probs.to(dtype)
        if mask is not None:  # garbage under the mask must not reach the gradient through 0 * inf
            log_q = log_q.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        coef = torch.softmax(log_p, dim=-1) * (log_p - log_q)
    return masked_token_mean((coef * log_p).sum(-1), mask)


def check_ids_and_log_probs(func: str, ids: object, teacher_log_probs: object, positions: torch.Size, vocab: int,
                            mask: Tensor | None, device: torch.device, *, on_device: bool = False) -> Tensor:
    """ids: int64 [*positions, k] in [0, V) at unmasked positions; teacher_log_probs: floating, same shape. Returns the
    ids with masked positions set to 0 (whatever sat there is ignored)."""
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64:
        raise fail(TypeError, func, "ids", "must be an int64 tensor", describe(ids))
    if ids.dim() != len(positions) + 1 or ids.shape[:-1] != positions or ids.shape[-1] == 0:
        raise fail(ValueError, func, "ids", f"must have shape {tuple(positions)} + (k,) with k >= 1", describe(ids))
    check_same_device(func, "ids", ids, device)
    check_float_tensor(func, "teacher_log_probs", teacher_log_probs)
    if teacher_log_probs.shape != ids.shape:
        raise fail(ValueError, func, "teacher_log_probs", f"must match ids' shape {tuple(ids.shape)}",
                   describe(teacher_log_probs))
    check_same_device(func, "teacher_log_probs", teacher_log_probs, device)
    check_id_range(func, "ids", ids, vocab, mask, on_device=on_device)
    return ids if mask is None else ids.masked_fill(~mask.bool().unsqueeze(-1), 0)
