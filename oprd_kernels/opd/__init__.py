"""Fused on-policy distillation (OPD) losses and LM-head statistics that never build the [N, |V|] logits."""

from oprd_kernels.opd.diagnostics import OPDStats
from oprd_kernels.opd.fused import (
    KINDS,
    fused_full_vocab_opd_loss,
    fused_generalized_jsd_loss,
    fused_opd_loss_and_stats,
    fused_opd_loss_at_ids,
    fused_sampled_token_opd_loss,
    fused_topk_opd_loss,
)
from oprd_kernels.opd.head_stats import HeadStats, lm_head_stats

__all__ = [
    "HeadStats",
    "KINDS",
    "OPDStats",
    "fused_full_vocab_opd_loss",
    "fused_generalized_jsd_loss",
    "fused_opd_loss_and_stats",
    "fused_opd_loss_at_ids",
    "fused_sampled_token_opd_loss",
    "fused_topk_opd_loss",
    "lm_head_stats",
]
