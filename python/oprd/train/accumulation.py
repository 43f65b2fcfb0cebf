"""Gradient accumulation over the micro-batches of one optimizer step, normalised as one batch would be.

Each micro-batch's terms are divided by the counts of the whole window (its selected OPRD rows, its OPD response
tokens), not by its own, and not by the number of micro-batches: a mean of per-batch means would weigh the tokens of
a short micro-batch more than those of a long one. This is verl's global token-mean; the accumulated gradient is the
gradient of the one-batch step. Under several processes the window is every rank's micro-batches (`window_total`
sums the counts over the ranks), so the ranks' gradients summed are the gradient of the one-batch step too.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

from torch import nn

from oprd.objective import LayerPlan, ObjectiveSpec, TokenCounts, compute_objective, token_counts
from oprd.rollout import Rollouts


def accumulate_gradients(spec: ObjectiveSpec, student: nn.Module, teacher: nn.Module, batches: Sequence[Rollouts],
                         plan: LayerPlan, autocast: Callable = contextlib.nullcontext, *,
                         with_metrics: bool = True,
                         window_total: Callable[[TokenCounts], TokenCounts] = lambda c: c) -> dict[str, float]:
    """Backward of every micro-batch's share of the window's loss into the student's .grad; returns the window's
    metrics (none without `with_metrics`): the `loss/*` shares summed (this process's part of the window's losses),
    the other metrics averaged over the micro-batches. `window_total`: this process's counts -> the whole window's."""
    counts = [token_counts(spec, b) for b in batches]
    window = window_total(sum(counts, TokenCounts()))
    metrics: dict[str, float] = {}
    for rollouts, own in zip(batches, counts):
        with autocast():
            result = compute_objective(spec, student, teacher, rollouts, plan, own.share_of(window),
                                       with_metrics=with_metrics)
        result.loss.backward()
        for key, value in result.metrics.items():
            share = value if key.startswith("loss/") else value / len(batches)
            metrics[key] = metrics.get(key, 0.0) + share
    return metrics
