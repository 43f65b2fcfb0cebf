"""What explains a demo result (issue 13): how far the student's LM head is from the teacher's, how well the
trained student does when its hidden states are decoded through the teacher's head and final norm, and how close
its distilled layers came to the teacher's (per-layer cosine).

OPRD never runs an untied student head, so it cannot move it: a student can match the teacher's states and still
decode them badly through its own head. The second number separates the two.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from oprd.train.head_transfer import copy_head_and_norm


@torch.no_grad()
def head_distance(student: nn.Module, teacher: nn.Module) -> float:
    """||W_s - W_t|| / ||W_t|| of the two LM-head weights (relative L2; the same shape is required)."""
    w_s, w_t = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    if w_s.shape != w_t.shape:
        raise ValueError(f"head_distance: the LM heads differ in shape: {tuple(w_s.shape)} and {tuple(w_t.shape)}")
    return float((w_s.float() - w_t.float()).norm() / w_t.float().norm())


def decoded_by_teacher(student: nn.Module, teacher: nn.Module) -> nn.Module:
    """A copy of `student` whose LM head and final norm are the teacher's (the student itself is untouched)."""
    probe = copy.deepcopy(student)
    copy_head_and_norm(probe, teacher)
    return probe


def final_cosines(metrics: list[dict]) -> dict[str, float]:
    """The per-layer rep/cosine_similarity of the last metrics line that has them ({} when none has)."""
    prefix = "rep/cosine_similarity/layer"
    for row in reversed(metrics):
        layers = {key[len(prefix):]: value for key, value in row.items() if key.startswith(prefix)}
        if layers:
            return layers
    return {}
