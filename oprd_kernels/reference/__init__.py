"""Plain-PyTorch definitions of every oprd op: the specification each fast backend is tested against, and the
last fallback. Readable and differentiable by autograd; not fast and not memory-lean."""

from oprd_kernels.reference.alignment import alignment_loss, cosine_similarity
from oprd_kernels.reference.bridge import bridge_loss, project_teacher
from oprd_kernels.reference.opd import (
    full_vocab_opd_loss,
    generalized_jsd_loss,
    opd_loss_at_ids,
    sampled_token_opd_loss,
    topk_opd_loss,
)
from oprd_kernels.reference.rowwise import NORM_EPS

__all__ = [
    "NORM_EPS",
    "alignment_loss",
    "bridge_loss",
    "cosine_similarity",
    "full_vocab_opd_loss",
    "generalized_jsd_loss",
    "opd_loss_at_ids",
    "project_teacher",
    "sampled_token_opd_loss",
    "topk_opd_loss",
]
