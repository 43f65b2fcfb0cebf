"""compute_objective: the loss of one batch of rollouts, assembled from the parts (passes, terms, the table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import torch
from torch import Tensor, nn

from oprd.objective.batch import Batch
from oprd.objective.counts import TokenCounts, distilled_positions
from oprd.objective.methods import terms_of
from oprd.objective.metrics import cosine_metrics
from oprd.objective.passes import Needs, student_pass, teacher_pass
from oprd.objective.plan import LayerPlan
from oprd.objective.spec import ObjectiveSpec
from oprd.rollout import Rollouts


@dataclass
class StepResult:
    loss: Tensor  # what backward runs on
    metrics: dict[str, float] = field(default_factory=dict)  # empty unless with_metrics


def _logs_cosine(spec: ObjectiveSpec, plan: LayerPlan) -> bool:
    """rep/cosine_similarity compares full-width states: not across widths, and not against a Bridge cache (which
    holds projections; the Bridge term logs rep/bridge_cosine in the shared subspace instead)."""
    return spec.log_cosine and plan.same_width and plan.bridge is None


def compute_objective(spec: ObjectiveSpec, student: nn.Module, teacher: nn.Module, rollouts: Rollouts,
                      plan: LayerPlan, share: TokenCounts | None = None, *, with_metrics: bool = True) -> StepResult:
    """The loss of `spec.method` on `rollouts` (student forward with grad), and, with `with_metrics`, its metrics.

    The method's terms (oprd.objective.methods) say what the teacher and student passes produce. Each term is a
    token-mean over this batch. With `share` (this batch's counts as fractions of those of every micro-batch of one
    optimizer step, `TokenCounts.share_of`) each term is scaled by its fraction: its token sum divided by the window's
    count, so that the micro-batches' losses add up to the one-batch loss. The `loss/*` metrics are then those shares
    too (they add up over the window); the other metrics are this batch's. Without `with_metrics` (a step that does
    not log) nothing is read back to the host for metrics, and diagnostics that only metrics need do not run."""
    uses = terms_of(spec)
    cosine = with_metrics and _logs_cosine(spec, plan)
    needs = reduce(Needs.__or__, (use.term.needs(spec) for use in uses), Needs(states=cosine))
    rows = weights = None
    if needs.states:
        with torch.no_grad():
            rows, weights = distilled_positions(spec, rollouts)
    t_out = teacher_pass(teacher, rollouts, plan, rows, needs)
    s_out = student_pass(student, rollouts, plan, needs)
    batch = Batch(spec, plan, rollouts, student, teacher, rows, weights, t_out, s_out)
    metrics: dict[str, float] = {}
    if cosine:
        metrics.update(cosine_metrics(s_out.states, t_out.cache, rows, weights, batch.layer_map, plan.student))
    total = torch.zeros((), device=rollouts.input_ids.device)
    for use in uses:
        scale = 1.0 if share is None else getattr(share, use.term.share)
        out = use.term.evaluate(batch, scale, with_metrics)
        total = total + use.coefficient(spec) * out.loss
        if with_metrics:
            metrics[f"loss/{use.term.name}"] = float(out.loss.detach())
            metrics.update(out.metrics)
    if with_metrics:
        metrics["loss/total"] = float(total.detach())
    return StepResult(total, metrics)
