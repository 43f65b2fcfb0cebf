"""Diagnostics of a step, computed on logging steps only: the per-layer cosine between the distilled states, and
the OPD numbers (sampled-token reward, entropies, top-k overlap) from materialised logits (the naive OPD path; the
fused path takes them from its own passes, oprd_kernels.fused_opd_loss_and_stats)."""

from __future__ import annotations

import torch
from torch import Tensor

import oprd_kernels
from oprd.rollout import Rollouts


@torch.no_grad()
def cosine_metrics(states: list[Tensor], cache: Tensor, rows: Tensor, weights: Tensor, layer_map: Tensor,
                   student_layers: list[int]) -> dict[str, float]:
    """rep/cosine_similarity (the mean over the distilled layers) and one entry per layer."""
    per_layer = oprd_kernels.cosine_similarity([s.detach() for s in states], cache, rows=rows, weights=weights,
                                               layer_map=layer_map, reduction="none")
    out = {"rep/cosine_similarity": float(per_layer.mean())}
    out.update({f"rep/cosine_similarity/layer{i}": float(c) for i, c in zip(student_layers, per_layer.tolist())})
    return out


@torch.no_grad()
def logit_metrics(student_logits: Tensor, teacher_logits: Tensor, rollouts: Rollouts, topk: int) -> dict[str, float]:
    """Sampled-token reward, entropies and the overlap of the top-k sets, averaged over response tokens."""
    mask = rollouts.response_mask[:, rollouts.prompt_width:].bool()
    if not mask.any():
        return {}
    log_p = torch.log_softmax(student_logits.float(), -1)[mask]
    log_q = torch.log_softmax(teacher_logits.float(), -1)[mask]
    tokens = rollouts.responses[mask].unsqueeze(-1)
    shared = min(log_p.shape[-1], log_q.shape[-1])  # padded heads: compare the ids both have
    k = min(topk, shared)
    top_p = oprd_kernels.ordered_topk(student_logits.detach()[mask][:, :shared], k)[1]  # ties: the smaller id
    top_q = oprd_kernels.ordered_topk(teacher_logits[mask][:, :shared], k)[1]
    overlap = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(-1).float().mean(-1)
    return {
        "opd/reward": float((log_q.gather(-1, tokens) - log_p.gather(-1, tokens)).mean()),
        "entropy/student": float(-(log_p.exp() * log_p).sum(-1).mean()),
        "entropy/teacher": float(-(log_q.exp() * log_q).sum(-1).mean()),
        f"overlap/top{k}": float(overlap.mean()),
    }
