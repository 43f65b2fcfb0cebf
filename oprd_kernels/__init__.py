"""oprd_kernels: the On-Policy Representation Distillation losses, one meaning, several backends.

Other trainers import this package alone (it never imports `oprd`, transformers or vllm). `reference` holds the
plain-PyTorch specification of every op; `alignment_loss` and `bridge_loss` dispatch to the fastest backend;
`opd` holds the fused OPD losses that never build the [N, |V|] logits.
"""

from oprd_kernels import reference
from oprd_kernels._build import build_info
from oprd_kernels._topk import ordered_topk
from oprd_kernels.dispatch import BACKENDS, backend_status
from oprd_kernels.functional import alignment_loss, bridge_loss
from oprd_kernels.modules import AlignmentLoss, BridgeLoss
from oprd_kernels.opd import (
    HeadStats,
    OPDStats,
    fused_full_vocab_opd_loss,
    fused_generalized_jsd_loss,
    fused_opd_loss_and_stats,
    fused_opd_loss_at_ids,
    fused_sampled_token_opd_loss,
    fused_topk_opd_loss,
    lm_head_stats,
)
from oprd_kernels.reference import NORM_EPS, cosine_similarity, project_teacher
from oprd_kernels.registry import backend_report

__version__ = "0.1.0"
__all__ = [
    "AlignmentLoss",
    "BridgeLoss",
    "BACKENDS",
    "HeadStats",
    "NORM_EPS",
    "alignment_loss",
    "backend_report",
    "backend_status",
    "bridge_loss",
    "build_info",
    "cosine_similarity",
    "OPDStats",
    "fused_full_vocab_opd_loss",
    "fused_generalized_jsd_loss",
    "fused_opd_loss_and_stats",
    "fused_opd_loss_at_ids",
    "fused_sampled_token_opd_loss",
    "fused_topk_opd_loss",
    "lm_head_stats",
    "ordered_topk",
    "project_teacher",
    "reference",
]
