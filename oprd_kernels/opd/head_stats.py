"""No-grad per-position statistics of an LM head's distribution, without the [N, |V|] logits: log-probs at given
ids, the top-k log-probs and ids, the entropy. The teacher side of OPD and the trainer's OPD metrics use these."""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels.opd._lm_head_stats import HeadStats, eager_lm_head_stats
from oprd_kernels.opd.custom_ops import traced_lm_head_stats

__all__ = ["HeadStats", "eager_lm_head_stats", "lm_head_stats"]


def lm_head_stats(hidden: Tensor, weight: Tensor, *, ids: Tensor | None = None, topk: int = 0,
                  entropy: bool = False, topk_among: int | None = None, row_block: int | None = None,
                  vocab_block: int | None = None, backend: str | None = None) -> HeadStats:
    """Statistics of softmax(hidden @ weight.T) at every position. hidden: [N, d] or [B, T, d]; weight: [V, d];
    ids: int64 [..., k] (positions' shape plus k) in [0, V); topk: 0 or k in [1, V]; entropy: whether to compute it;
    topk_among: take the top-k among the ids below it only (the ids another, differently padded head shares; the
    softmax is still over all V rows; `ids` must then lie below it too); backend: as for the fused OPD losses (auto
    ignores the weight's dtype here: its bf16 rule concerns the losses' weight gradient, and this has none)."""
    if torch.compiler.is_compiling():  # the custom op: no Python dispatch inside a compiled graph
        return HeadStats(*traced_lm_head_stats(hidden, weight, ids=ids, topk=topk, entropy=entropy,
                                               topk_among=topk_among, row_block=row_block, vocab_block=vocab_block,
                                               backend=backend))
    return eager_lm_head_stats(hidden, weight, ids=ids, topk=topk, entropy=entropy, topk_among=topk_among,
                               row_block=row_block, vocab_block=vocab_block, backend=backend)
