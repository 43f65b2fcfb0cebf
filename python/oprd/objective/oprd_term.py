"""The OPRD term: the multi-layer alignment loss between the student's distilled layers and the teacher cache."""

from __future__ import annotations

from torch import Tensor

import oprd_kernels
from oprd.injection import injected_alignment_loss
from oprd.objective.batch import Batch
from oprd.objective.passes import Needs
from oprd.objective.terms import TermOutput


class OPRDTerm:
    """L_OPRD (Eq. 6): `oprd.loss_type` over the distilled rows and layers, `weighting` as `select_positions` says;
    with gradient injection the per-layer gradients enter backprop one layer at a time (oprd.injection)."""

    name = "oprd"
    share = "oprd"  # which TokenCounts field normalises it across micro-batches

    def needs(self, spec) -> Needs:
        return Needs(states=True)

    def evaluate(self, batch: Batch, scale: float, with_metrics: bool) -> TermOutput:
        spec = batch.spec
        kwargs = dict(rows=batch.rows, weights=batch.weights * scale, layer_map=batch.layer_map,
                      loss_type=spec.loss_type, backend=spec.backend)
        states, cache = batch.student_out.states, batch.teacher_out.cache
        loss: Tensor = (injected_alignment_loss(states, cache, **kwargs) if spec.gradient_injection else
                        oprd_kernels.alignment_loss(states, cache, **kwargs))
        return TermOutput(loss)
