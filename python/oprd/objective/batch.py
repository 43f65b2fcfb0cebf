"""What every loss term of one objective reads: the batch, its distilled positions and both models' passes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from oprd.capture import StudentStates
from oprd.objective.passes import TeacherOutputs
from oprd.objective.plan import LayerPlan
from oprd.objective.spec import ObjectiveSpec
from oprd.rollout import Rollouts


@dataclass
class Batch:
    spec: ObjectiveSpec
    plan: LayerPlan
    rollouts: Rollouts
    student: nn.Module
    teacher: nn.Module
    rows: Tensor | None  # int64 [N_sel] distilled positions into the flattened batch (when states were needed)
    weights: Tensor | None  # [N_sel] their weights, summing to 1
    teacher_out: TeacherOutputs
    student_out: StudentStates

    @cached_property
    def layer_map(self) -> Tensor:
        """int64 [L]: the cache layer of each distilled student layer."""
        return torch.tensor(self.plan.layer_map, device=self.rollouts.input_ids.device)

    @property
    def response_mask(self) -> Tensor:
        """[B, T] the response tokens (T = the response columns)."""
        return self.rollouts.response_mask[:, self.rollouts.prompt_width:]
