"""Per-position diagnostics of an OPD step, computed by the fused losses' own statistics passes (OPDStats).

A trainer logs the sampled-token reward log q(y) - log p(y), both models' entropies and the overlap of their top-k
sets. Asked for (`fused_opd_loss_and_stats`), the sampled-token and top-k losses take these from the passes they run
anyway: the statistics pass of each head also accumulates the entropy and keeps a top-k, and the teacher's logits are
read at the sampled tokens too. No extra LM-head pass runs, except for the full-vocabulary KL on the vocabulary-tiled
backends, whose joint KL pass keeps neither, and which then runs one no-grad statistics pass per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels.opd.stats import LogitStats


@dataclass(frozen=True)
class OPDStats:
    """One value per live position (mask true), in the order of the flattened positions; float32 (float64 inputs:
    float64). Detached: nothing here carries a gradient."""

    reward: Tensor  # [n] log q(y) - log p(y) at the sampled tokens
    entropy_student: Tensor  # [n] in nats, over the student's whole head
    entropy_teacher: Tensor  # [n] over the teacher's whole head
    overlap: Tensor  # [n] share of the student's top-k ids among the teacher's top-k (both among the shared ids)
    k: int  # the top-k size of `overlap`

    def means(self) -> dict[str, Tensor]:
        """The trainer's metrics as 0-d tensors (no host read): means over the live positions; {} when there are
        none."""
        if self.reward.numel() == 0:
            return {}
        return {"opd/reward": self.reward.mean(), "entropy/student": self.entropy_student.mean(),
                "entropy/teacher": self.entropy_teacher.mean(), f"overlap/top{self.k}": self.overlap.mean()}

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four tensors, for autograd.Function outputs (OPDStats.of_tuple rebuilds it)."""
        return self.reward, self.entropy_student, self.entropy_teacher, self.overlap

    @classmethod
    def of_tuple(cls, values, k: int) -> "OPDStats":
        reward, entropy_student, entropy_teacher, overlap = values
        return cls(reward=reward, entropy_student=entropy_student, entropy_teacher=entropy_teacher, overlap=overlap,
                   k=k)


def overlap_share(top_student: Tensor, top_teacher: Tensor) -> Tensor:
    """[n] the share of each row's student top-k ids that are among its teacher top-k ids."""
    hits = (top_student.unsqueeze(-1) == top_teacher.unsqueeze(-2)).any(-1)
    return hits.to(torch.float32).mean(-1)


def stats_from_heads(student: LogitStats, teacher: LogitStats, k: int, student_token: int = 0,
                     teacher_token: int = 0) -> OPDStats:
    """OPDStats from both heads' statistics passes: each with the entropy, a top-k of size >= k, and the logits at
    the sampled tokens in column `*_token` of `at_ids`."""
    log_p = student.at_ids[:, student_token] - student.logsumexp
    log_q = teacher.at_ids[:, teacher_token] - teacher.logsumexp
    overlap = overlap_share(student.topk_ids[:, :k], teacher.topk_ids[:, :k]).to(log_p.dtype)
    return OPDStats(reward=log_q - log_p, entropy_student=student.entropy, entropy_teacher=teacher.entropy,
                    overlap=overlap, k=k)


def stats_from_logits(z: Tensor, z_teacher: Tensor, tokens: Tensor, shared: int, k: int) -> OPDStats:
    """OPDStats from whole rows of both models' logits [rows, V_s], [rows, V_t] (the rowwise backend's chunks, read
    before they are overwritten); tokens [rows]. The top-k is taken on the logits, as the losses take it."""
    from oprd_kernels._topk import ordered_topk

    log_p, log_q = torch.log_softmax(z, dim=1), torch.log_softmax(z_teacher, dim=1)
    tok = tokens[:, None]
    reward = (log_q.gather(1, tok) - log_p.gather(1, tok)).squeeze(1)
    entropy_p = -(log_p.exp() * log_p).sum(1)
    entropy_q = -(log_q.exp() * log_q).sum(1)
    overlap = overlap_share(ordered_topk(z[:, :shared], k)[1], ordered_topk(z_teacher[:, :shared], k)[1])
    return OPDStats(reward=reward, entropy_student=entropy_p, entropy_teacher=entropy_q,
                    overlap=overlap.to(log_p.dtype), k=k)


def concat_stats(parts: list[OPDStats], k: int, dtype: torch.dtype, device: torch.device) -> OPDStats:
    """The chunks' OPDStats as one (empty tensors when there are none)."""
    if not parts:
        empty = torch.empty(0, dtype=dtype, device=device)
        return OPDStats(empty, empty, empty, empty, k)
    return OPDStats(*(torch.cat([getattr(p, f) for p in parts]) for f in ("reward", "entropy_student",
                                                                          "entropy_teacher", "overlap")), k=k)
