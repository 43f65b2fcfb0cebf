"""The OPD term: one of the OPD variants (sampled-token, top-k, full-vocabulary reverse KL) on the response tokens.

`opd_impl="fused"` computes it from the final hidden states and the LM-head weights with oprd_kernels' fused losses
(no [B, T, |V|] logits ever); `"naive"` runs both LM heads on the response columns and applies
oprd_kernels.reference's faithful losses to the materialised logits: the baseline the benchmarks measure. One table
(`VARIANTS`) names each variant's two implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

import oprd_kernels
from oprd.capture import decoder_parts
from oprd.objective.batch import Batch
from oprd.objective.metrics import logit_metrics
from oprd.objective.passes import Needs
from oprd.objective.terms import TermOutput


@dataclass(frozen=True)
class Variant:
    """fused(s_final, s_weight, t_final, t_weight, tokens, mask, topk) and
    reference(s_logits, t_logits, tokens, mask, topk): the same loss; `kind` names it for
    oprd_kernels.fused_opd_loss_and_stats (the fused loss with its diagnostics, on logging steps)."""

    fused: Callable[..., Tensor]
    reference: Callable[..., Tensor]
    kind: str


VARIANTS = {
    "opd_top1": Variant(
        lambda h, w, th, tw, tokens, mask, k: oprd_kernels.fused_sampled_token_opd_loss(h, w, th, tw, tokens, mask),
        lambda s, t, tokens, mask, k: oprd_kernels.reference.sampled_token_opd_loss(s, t, tokens, mask),
        "sampled_token"),
    "opd_topk": Variant(
        lambda h, w, th, tw, tokens, mask, k: oprd_kernels.fused_topk_opd_loss(h, w, th, tw, mask, k=k),
        lambda s, t, tokens, mask, k: oprd_kernels.reference.topk_opd_loss(s, t, mask, k=k), "topk"),
    "opd_full": Variant(
        lambda h, w, th, tw, tokens, mask, k: oprd_kernels.fused_full_vocab_opd_loss(h, w, th, tw, mask),
        lambda s, t, tokens, mask, k: oprd_kernels.reference.full_vocab_opd_loss(s, t, mask), "full_vocab"),
}


def _head_weight(model: nn.Module, role: str) -> Tensor:
    head = decoder_parts(model).lm_head
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"compute_objective: the {role}'s LM head has a bias, which the fused OPD losses do not "
                         f"support; got {type(head).__name__} with a bias (use opd_impl='naive')")
    if hasattr(head.weight, "full_tensor"):  # a DTensor: an FSDP2 root read outside its forward
        raise ValueError(f"compute_objective: the {role}'s LM-head weight is sharded (an FSDP2 DTensor). The fused OPD "
                         f"losses read it right after the model's own forward, which gathers it: capture the final "
                         f"state with oprd.capture, which runs an FSDP2 model through its root forward")
    return head.weight


class OPDTerm:
    """L_OPD of the spec's variant (`ObjectiveSpec.opd`), a token-mean over the response tokens."""

    name = "opd"
    share = "opd"

    def needs(self, spec) -> Needs:
        return Needs(final=True)

    def evaluate(self, batch: Batch, scale: float, with_metrics: bool) -> TermOutput:
        columns = batch.rollouts.response_logit_slice()
        s_final, t_final = batch.student_out.final[:, columns], batch.teacher_out.final[:, columns]
        metrics = with_metrics and batch.spec.logit_metrics
        run = self._fused if batch.spec.opd_impl == "fused" else self._naive
        loss, out = run(batch, VARIANTS[batch.spec.opd], s_final, t_final, metrics)
        return TermOutput(loss * scale, out)

    @staticmethod
    def _fused(batch: Batch, variant: Variant, s_final: Tensor, t_final: Tensor,
               metrics: bool) -> tuple[Tensor, dict[str, float]]:
        """From the final states and the LM-head weights; the metrics from the loss's own statistics passes."""
        spec, tokens, mask = batch.spec, batch.rollouts.responses, batch.response_mask
        s_weight, t_weight = _head_weight(batch.student, "student"), _head_weight(batch.teacher, "teacher")
        if not metrics:
            return variant.fused(s_final, s_weight, t_final, t_weight, tokens, mask, spec.topk), {}
        stats_k = min(spec.topk, s_weight.shape[0], t_weight.shape[0])
        loss, stats = oprd_kernels.fused_opd_loss_and_stats(
            variant.kind, s_final, s_weight, t_final, t_weight, tokens, mask,
            k=spec.topk, stats_k=stats_k)
        return loss, {key: float(value) for key, value in stats.means().items()}

    @staticmethod
    def _naive(batch: Batch, variant: Variant, s_final: Tensor, t_final: Tensor,
               metrics: bool) -> tuple[Tensor, dict[str, float]]:
        """The reference code's way: both LM heads on the response columns, the losses on the logits."""
        s_logits = decoder_parts(batch.student).lm_head(s_final)
        with torch.no_grad():
            t_logits = decoder_parts(batch.teacher).lm_head(t_final)
        loss = variant.reference(s_logits, t_logits, batch.rollouts.responses, batch.response_mask, batch.spec.topk)
        return loss, (logit_metrics(s_logits, t_logits, batch.rollouts, batch.spec.topk) if metrics else {})
