"""The objectives of a run over its steps: `method.name` from step 1 and, when `method.then` is set, that method
after `method.switch_step` steps (the paper's Bridge-then-OPD row), each with the layer plan of its
student-teacher pair. Everything here is checked before any model work: an unusable pair, or OPD between two
tokenizers, is refused when the phases are planned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from oprd.bridge import load_bridge
from oprd.objective import LayerPlan, ObjectiveSpec, plan_layers
from oprd.train.config import TrainConfig, parse_layers


def objective_spec(config: TrainConfig, method: str | None = None) -> ObjectiveSpec:
    """The objective `config` describes, for `method.name` (or `method`: the one of a later phase)."""
    backend = None if config.run.backend == "auto" else config.run.backend
    o, m = config.oprd, config.method
    return ObjectiveSpec(method=method or m.name, topk=m.topk, mu=m.mu, opd_variant=m.opd_variant, opd_impl=m.opd_impl,
                         logit_metrics=m.logit_metrics, coefficient=o.coefficient, loss_type=o.loss_type,
                         layers=parse_layers(o.layers), positions=o.positions, k=o.k, weighting=o.weighting,
                         gradient_injection=o.gradient_injection, backend=backend,
                         bridge_coefficient=config.bridge.coefficient)


@dataclass(frozen=True)
class Phase:
    """From step `first` (1-based) on, the run trains `spec` over the layers of `plan`."""

    first: int
    spec: ObjectiveSpec
    plan: LayerPlan


def plan_phases(config: TrainConfig, student: nn.Module, teacher: nn.Module, device: torch.device, *,
                two_tokenizers: bool = False) -> list[Phase]:
    """The run's phases in step order (a bridge file is loaded onto `device` when a phase needs one);
    `two_tokenizers`: the teacher reads other tokens than the student, where only the Bridge methods can train."""
    m = config.method
    methods = [(1, m.name)] + ([(m.switch_step + 1, m.then)] if m.then else [])
    specs = [(first, objective_spec(config, method)) for first, method in methods]
    bridge = load_bridge(config.bridge.path).to(device) if any(s.uses_bridge for _, s in specs) else None
    phases = [Phase(first, spec, plan_layers(spec, student, teacher, bridge)) for first, spec in specs]
    if two_tokenizers and any(p.spec.uses_opd for p in phases):
        raise ValueError(f"the teacher's tokenizer is not the student's: OPD compares next-token distributions over "
                         f"one vocabulary, so method(s) {[p.spec.method for p in phases if p.spec.uses_opd]} cannot "
                         f"train this pair; use method.name=oprd_bridge (states aligned by text offsets)")
    return phases


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase of step `step` (1-based): the last one that has started by then."""
    return [phase for phase in phases if phase.first <= step][-1]
