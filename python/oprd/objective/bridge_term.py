"""The Bridge term (OPRD-Bridge Stage 2, PAPER_NOTES §3): the student's distilled layers against the teacher's cached
projections, compared in the bridge's shared r-dim subspace by the fused `bridge_loss` (P_S h never leaves it)."""

from __future__ import annotations

import oprd_kernels
from oprd.objective.batch import Batch
from oprd.objective.passes import Needs
from oprd.objective.terms import TermOutput


class BridgeTerm:
    """L_Bridge: per layer, the token-mean over the distilled rows of ||z_S/|z_S| - z_T/|z_T|||^2 = 2 - 2 cos, with
    z_S = P_S h_S and z_T = P_T (h_T - mu_T); the mean over layers. This is the paper's Stage-2 loss (both vectors
    normalised, squared distance summed over the r dimensions), i.e. r times `bridge_loss`'s "nmse". P_S and P_T are
    frozen (the bridge's tensors never require grad); only the student backbone is trained."""

    name = "oprd_bridge"
    share = "oprd"  # the selected rows normalise it, as they do L_OPRD

    def needs(self, spec) -> Needs:
        return Needs(states=True)

    def evaluate(self, batch: Batch, scale: float, with_metrics: bool) -> TermOutput:
        bridge = batch.plan.bridge
        cache = batch.teacher_out.cache  # [L_t, N_sel, r]
        teacher_z = cache if batch.plan.layer_map == list(range(cache.shape[0])) else cache[batch.layer_map]
        weights = batch.weights * (scale * bridge.rank)
        loss = oprd_kernels.bridge_loss(batch.student_out.states, teacher_z, bridge.proj_s, rows=batch.rows,
                                        weights=weights, loss_type="nmse", backend=batch.spec.backend)
        metrics = {}
        if with_metrics and scale > 0:  # the batch's weighted mean cosine in the shared subspace
            metrics["rep/bridge_cosine"] = 1.0 - float(loss.detach()) / scale / 2.0
        view = batch.rollouts.teacher
        if with_metrics and view is not None:  # another tokenizer: response positions without a teacher partner
            metrics["bridge/unpaired_share"] = view.unpaired / max(view.response_positions, 1)
        return TermOutput(loss, metrics)
