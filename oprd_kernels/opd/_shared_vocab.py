"""Heads of different row counts (padded vocabularies) for the vocabulary-tiled passes.

Models that share a tokenizer can pad their LM heads to different sizes (Qwen2.5-1.5B: 151,936 rows, Qwen2.5-7B:
152,064). Each model normalises over its own head, and the losses compare the shared ids [0, S), S = min(V_s, V_t):
top-k among the shared ids, the reverse KL summed over them. The passes themselves are unchanged: they run on the
head's first S rows, a view, and on the rows past S (the padding, usually 128) for the log-sum-exp alone.

Reverse KL over the shared ids, with p and q normalised over their whole heads and P_S = sum_{v<S} p_v:
    KL = P_S * (E_shared[z_p - z_q] - lse_p + lse_q)
    d KL / d z_v = p_v * (log p_v - log q_v - (KL + P_S - 1))   for v < S   (the KL form with KL' = KL + P_S - 1)
    d KL / d z_v = -p_v * (KL + P_S)                             for v >= S  (the dense form)
which is the usual p (log p - log q - KL) when both heads have S rows (P_S = 1). The generalised JSD (_jsd.py) has
the same two parts: its own form over the shared rows, the dense form past them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels.opd._gradient import JSDTerms, KLTerms, LogitGradient
from oprd_kernels.opd._jsd import tail_coefficient
from oprd_kernels.opd.stats import KLStats, LogitStats


def head_statistics(passes, hidden: Tensor, weight: Tensor, rows: Tensor | None, tiling, mm_dtype: torch.dtype,
                    out_dtype: torch.dtype, shared: int, *, ids: Tensor | None = None, topk: int = 0,
                    entropy: bool = False) -> LogitStats:
    """`passes.logit_stats` over the whole head, with the top-k (and `ids`, which must be < shared) among the first
    `shared` rows."""
    if shared >= weight.shape[0]:
        return passes.logit_stats(hidden, weight, rows, tiling, mm_dtype, out_dtype, ids=ids, topk=topk,
                                  entropy=entropy)
    main = passes.logit_stats(hidden, weight[:shared], rows, tiling, mm_dtype, out_dtype, ids=ids, topk=topk,
                              entropy=entropy)
    tail = passes.logit_stats(hidden, weight[shared:], rows, tiling, mm_dtype, out_dtype, entropy=entropy)
    lse = torch.logaddexp(main.logsumexp, tail.logsumexp)
    ent = None
    if entropy:  # H = lse - E_p[z], and E_p[z] = sum over the two parts of P_part * (lse_part - H_part)
        mean_z = sum(torch.exp(part.logsumexp - lse) * (part.logsumexp - part.entropy) for part in (main, tail))
        ent = lse - mean_z
    return LogitStats(lse, main.at_ids, main.topk_values, main.topk_ids, ent)


def _tail_lse(passes, hidden, weight, rows, tiling, mm_dtype, out_dtype, shared: int, lse_shared: Tensor) -> Tensor:
    if weight.shape[0] == shared:
        return lse_shared
    tail = passes.logit_stats(hidden, weight[shared:], rows, tiling, mm_dtype, out_dtype)
    return torch.logaddexp(lse_shared, tail.logsumexp)


def reverse_kl(passes, hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, rows: Tensor | None,
               tiling, mm_dtypes, out_dtype: torch.dtype, shared: int,
               row_weight: Tensor) -> tuple[KLStats, list[tuple[slice, LogitGradient]]]:
    """The per-row reverse KL over the shared ids, and the logits gradient as (rows of the student head, gradient)
    parts for `passes.backprop_logits`."""
    st = passes.reverse_kl_stats(hidden, weight[:shared], t_hidden, t_weight[:shared], rows, tiling, mm_dtypes,
                                 out_dtype)
    if shared == weight.shape[0] == t_weight.shape[0]:
        return st, [(slice(None), LogitGradient(st.lse_student, kl=KLTerms(t_hidden, t_weight, st.lse_teacher, st.kl),
                                                row_weight=row_weight))]
    lse_p = _tail_lse(passes, hidden, weight, rows, tiling, mm_dtypes[0], out_dtype, shared, st.lse_student)
    lse_q = _tail_lse(passes, t_hidden, t_weight, rows, tiling, mm_dtypes[1], out_dtype, shared, st.lse_teacher)
    p_shared = torch.exp(st.lse_student - lse_p)
    kl = p_shared * (st.kl + st.lse_student - st.lse_teacher - lse_p + lse_q)
    parts = [(slice(0, shared), LogitGradient(lse_p, kl=KLTerms(t_hidden, t_weight[:shared], lse_q, kl + p_shared - 1),
                                              row_weight=row_weight))]
    if weight.shape[0] > shared:
        parts.append((slice(shared, None), _past_shared(lse_p, -(kl + p_shared) * row_weight)))
    return KLStats(kl, lse_p, lse_q), parts


def _past_shared(lse_p: Tensor, coefficient: Tensor) -> LogitGradient:
    """The dense form coefficient * p for the student's rows past the shared ids."""
    zeros = torch.zeros((lse_p.shape[0], 1), dtype=torch.int64, device=lse_p.device)
    return LogitGradient(lse_p, dense=coefficient, ids=zeros, sparse=zeros.to(lse_p.dtype))


def generalized_jsd(passes, hidden: Tensor, weight: Tensor, t_hidden: Tensor, t_weight: Tensor, rows: Tensor | None,
                    tiling, mm_dtypes, out_dtype: torch.dtype, shared: int, row_weight: Tensor,
                    beta: float) -> tuple[Tensor, list[tuple[slice, LogitGradient]]]:
    """The per-row generalised JSD over the shared ids (0 <= beta < 1) and its logits gradient parts: each head's
    log-sum-exp from a statistics pass over its whole head, then `passes.jsd_stats` over the shared rows of both."""
    lse_p = passes.logit_stats(hidden, weight, rows, tiling, mm_dtypes[0], out_dtype).logsumexp
    lse_q = passes.logit_stats(t_hidden, t_weight, rows, tiling, mm_dtypes[1], out_dtype).logsumexp
    st = passes.jsd_stats(hidden, weight[:shared], t_hidden, t_weight[:shared], rows, tiling, mm_dtypes, out_dtype,
                          lse_p, lse_q, beta)
    parts = [(slice(0, shared), LogitGradient(lse_p, row_weight=row_weight,
                                              jsd=JSDTerms(t_hidden, t_weight[:shared], lse_q, beta, st.e)))]
    if weight.shape[0] > shared:
        parts.append((slice(shared, None), _past_shared(lse_p, tail_coefficient(beta, st.e) * row_weight)))
    return st.jsd, parts
