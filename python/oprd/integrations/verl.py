"""OPRD on verl's batch layout: the adapter functions a verl recipe calls (examples/verl/, docs/integrations.md).

verl does not pass hidden states to its loss functions, so OPRD in verl needs two patch points, not a fork:
1. the teacher worker returns the compact cache (`teacher_side`) instead of log-probs: the rows to distil, their
   weights and the teacher's states there, for the batch's own padded layout;
2. the actor's forward captures the student's states at the distilled layers (`oprd.capture.capture_student`
   around the model call) and the loss is `actor_loss`, on padded [B, S, D] states or on verl's packed
   ("remove padding", THD) ones of shape [1, total_tokens, D].

verl's padded layout (a DataProto's batch): `input_ids` and `attention_mask` [B, P + R] (prompts left-padded,
responses right-padded), `responses` [B, R], `response_mask` [B, R] (1 on generated tokens up to and including EOS).
Packing drops every position whose attention mask is 0 and concatenates the rows in order, so a padded position
(b, s) is packed position cumsum(attention_mask)[b, s] - 1. verl itself is not imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import oprd_kernels
from oprd.capture import teacher_cache
from oprd.objective import LayerPlan, ObjectiveSpec, distilled_positions
from oprd.rollout import Rollouts

KEYS = ("input_ids", "attention_mask", "response_mask")


def rollouts_from_batch(batch: Mapping[str, Tensor]) -> Rollouts:
    """oprd's `Rollouts` from verl's padded batch (each row its own prompt)."""
    missing = [k for k in KEYS if k not in batch]
    if missing:
        raise ValueError(f"rollouts_from_batch: `batch` needs verl's keys {list(KEYS)}; missing {missing}")
    ids, attention, response = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    if ids.dim() != 2 or attention.shape != ids.shape or response.dim() != 2 or response.shape[0] != ids.shape[0] \
            or response.shape[1] > ids.shape[1]:
        raise ValueError(f"rollouts_from_batch: need input_ids and attention_mask [B, P + R] and response_mask "
                         f"[B, R]; got {list(ids.shape)}, {list(attention.shape)}, {list(response.shape)}")
    prompt_width = ids.shape[1] - response.shape[1]
    full = torch.cat([response.new_zeros(response.shape[0], prompt_width), response], dim=1)
    return Rollouts(ids, attention, full * attention, prompt_width, torch.arange(ids.shape[0], device=ids.device))


def packed_rows(attention_mask: Tensor, rows: Tensor) -> Tensor:
    """`rows` (into the flattened padded [B * S]) as indices into verl's packed tokens."""
    flat = attention_mask.reshape(-1).long()
    if rows.numel() and not bool(flat[rows].all()):
        raise ValueError("packed_rows: a selected row is a padding position (attention mask 0), which packing drops")
    return (flat.cumsum(0) - 1)[rows]


@dataclass(frozen=True)
class TeacherSide:
    """What the teacher worker returns per batch, for the actor's loss: int64 rows into the padded [B * S], their
    float32 weights, and the cache [L_t, N_sel, D] (the teacher's states there, bf16)."""

    rows: Tensor
    weights: Tensor
    cache: Tensor


@torch.no_grad()
def teacher_side(teacher: nn.Module, batch: Mapping[str, Tensor], spec: ObjectiveSpec, plan: LayerPlan) -> TeacherSide:
    """Patch point 1: the teacher's compact cache for verl's batch (the truncated pass of `oprd train`)."""
    rollouts = rollouts_from_batch(batch)
    rows, weights = distilled_positions(spec, rollouts)
    cache = teacher_cache(teacher, rollouts.input_ids, rollouts.attention_mask, plan.teacher, rows)
    return TeacherSide(rows, weights, cache)


def actor_loss(student_states: list[Tensor], side: TeacherSide, attention_mask: Tensor, spec: ObjectiveSpec,
               plan: LayerPlan, *, packed: bool = False) -> Tensor:
    """Patch point 2: the OPRD loss (times `spec.coefficient`) from the student's states at `plan.student`: padded
    [B, S, D] each, or with `packed` verl's [1, total_tokens, D] each (rows mapped by `packed_rows`)."""
    if len(student_states) != len(plan.student):
        raise ValueError(f"actor_loss: one state tensor per distilled student layer {plan.student} is needed; got "
                         f"{len(student_states)}")
    rows = packed_rows(attention_mask, side.rows) if packed else side.rows
    layer_map = torch.tensor(plan.layer_map, device=side.rows.device)
    loss = oprd_kernels.alignment_loss(student_states, side.cache, rows=rows, weights=side.weights,
                                       layer_map=layer_map, loss_type=spec.loss_type, backend=spec.backend)
    return spec.coefficient * loss
