"""The two model passes of one objective: the teacher's (no grad) and the student's (with grad), each running only
as far as the chosen terms need (`Needs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from oprd.capture import StudentStates, capture_student, teacher_cache, teacher_cache_and_final
from oprd.objective.counts import teacher_rows
from oprd.objective.plan import LayerPlan
from oprd.rollout import Rollouts


@dataclass(frozen=True)
class Needs:
    """What the terms of one objective read from the passes."""

    states: bool = False  # the distilled layers (student: as computed; teacher: its selected rows, cached)
    final: bool = False  # both models' post-norm final states, for their LM heads

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(self.states or other.states, self.final or other.final)


@dataclass
class TeacherOutputs:
    cache: Tensor | None  # [L_t, N_sel, D] bf16: the teacher's selected rows of its cached layers (Needs.states);
    # with a bridge in the plan, their projections P_T (h - mu_T) [L_t, N_sel, r] in float32
    final: Tensor | None  # [B, S, D_t] post-norm final state (Needs.final)


@torch.no_grad()
def teacher_pass(teacher: nn.Module, rollouts: Rollouts, plan: LayerPlan, rows: Tensor | None,
                 needs: Needs) -> TeacherOutputs:
    """One no-grad teacher pass. States alone: truncated after the deepest cached layer, no norm, no LM head. With a
    bridge in the plan the cache holds the r-dim projections (the full-width rows never leave the pass). `rows` are
    the student's; with a teacher of another tokenizer the pass runs on its view and reads the partners' rows."""
    ids, mask = rollouts.input_ids, rollouts.attention_mask
    if rollouts.teacher is not None:  # another tokenizer: the teacher reads its own tokens of the same text
        if needs.final:
            raise ValueError("teacher_pass: a teacher of another tokenizer has no next-token distribution over the "
                             "student's vocabulary; OPD terms need one tokenizer")
        ids, mask = rollouts.teacher.input_ids, rollouts.teacher.attention_mask
        rows = teacher_rows(rollouts, rows) if rows is not None else None
    projection = None if plan.bridge is None else plan.bridge.teacher_projection()
    if needs.states and needs.final:
        return TeacherOutputs(*teacher_cache_and_final(teacher, ids, mask, plan.teacher, rows, projection=projection))
    if needs.states:
        return TeacherOutputs(teacher_cache(teacher, ids, mask, plan.teacher, rows, projection=projection), None)
    return TeacherOutputs(None, capture_student(teacher, ids, mask, "last", final_state=True).final)


def student_pass(student: nn.Module, rollouts: Rollouts, plan: LayerPlan, needs: Needs) -> StudentStates:
    """The student's pass with grad: the distilled layers as computed (Needs.states) and the final state
    (Needs.final); without the final state the blocks after the deepest distilled layer do not run."""
    return capture_student(student, rollouts.input_ids, rollouts.attention_mask,
                           plan.student if needs.states else "last", final_state=needs.final)
