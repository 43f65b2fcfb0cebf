"""OPRD's teacher states carried per sample through verl's batches, and the actor loss on its no-padding micro-batches.

verl 0.9 moves a batch between its driver and workers as one DataProto / TensorDict, converts it to its no-padding
layout (nested `input_ids` [B, j], each row its attended tokens) before every worker call, and splits it into
micro-batches by sequence length, reordering the samples. A compact cache [L_t, N_sel, D] indexed by flat batch
rows does not survive that; tensors with a leading sample axis do. So the teacher side is returned per sample, in
the response-padded layout of verl's `response_mask` [B, R]:

- `oprd_positions` [B, R] int64: each distilled response token's index in its row's unpadded sequence (the index
  into that row of the nested `input_ids`), -1 where the token is not distilled;
- `oprd_teacher_states` [B, R, L_t, D] (bf16): the teacher's states there, zeros elsewhere.

On the actor, `micro_batch_loss` maps them onto the packed [1, total_tokens, D] states of the micro-batch with the
nested `input_ids`' offsets, and weights each row so that the OPRD term is aggregated as verl's own
`agg_loss(loss_mat, loss_mask, loss_agg_mode, ...)` would aggregate a per-token loss (`verl_token_coefficients`).
verl itself is not imported here; examples/verl/ holds the verl-side glue.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

import oprd_kernels
from oprd.integrations.verl import teacher_side
from oprd.objective import LayerPlan, ObjectiveSpec

POSITIONS, STATES = "oprd_positions", "oprd_teacher_states"
AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean")


@torch.no_grad()
def teacher_sample_tensors(teacher: nn.Module, batch: Mapping[str, Tensor], spec: ObjectiveSpec,
                           plan: LayerPlan) -> dict[str, Tensor]:
    """Patch point 1, per sample: `oprd_positions` and `oprd_teacher_states` for verl's padded batch (the keys of
    `oprd.integrations.verl.rollouts_from_batch`): `teacher_side`'s compact cache, scattered to the sample axis."""
    side = teacher_side(teacher, batch, spec, plan)  # the compact form: rows into the padded [B * S]
    rows, cache, attention = side.rows, side.cache, batch["attention_mask"]
    batch_size, seq_len = attention.shape
    width = batch["response_mask"].shape[1]
    sample, column = rows // seq_len, rows % seq_len - (seq_len - width)
    unpadded_index = (attention.long().cumsum(1) - 1).reshape(-1)[rows]
    positions = torch.full((batch_size, width), -1, dtype=torch.long, device=rows.device)
    positions[sample, column] = unpadded_index
    states = cache.new_zeros(batch_size, width, cache.shape[0], cache.shape[2])
    states[sample, column] = cache.transpose(0, 1)
    return {POSITIONS: positions, STATES: states}


def verl_token_coefficients(loss_mask: Tensor, loss_agg_mode: str, *, dp_size: int = 1,
                            batch_num_tokens: int | float | Tensor | None = None,
                            global_batch_size: int | float | Tensor | None = None,
                            loss_scale_factor: int | float | None = None) -> Tensor:
    """c [b, R] with sum(c * loss_mat) == verl 0.9's `agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size, ...)`
    for every per-token loss: each of its modes is linear in the loss matrix, so it is a per-token weighting."""
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"verl_token_coefficients: `loss_agg_mode` must be one of {list(AGG_MODES)}; got "
                         f"{loss_agg_mode!r}")
    if loss_mask.dim() != 2:
        raise ValueError(f"verl_token_coefficients: `loss_mask` must be [b, R]; got shape {tuple(loss_mask.shape)}")
    mask = loss_mask.to(torch.float32)
    if loss_agg_mode == "token-mean":
        return mask / _global("batch_num_tokens", batch_num_tokens, mask.sum(), dp_size) * dp_size
    if loss_agg_mode == "token-sum":
        return mask * dp_size
    per_sample = mask.sum(1, keepdim=True)
    sequences = _global("global_batch_size", global_batch_size, (per_sample > 0).sum(), dp_size)
    if loss_agg_mode == "seq-mean-token-mean":
        return mask / (per_sample + 1e-8) / sequences * dp_size
    coefficients = mask / sequences * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        coefficients = coefficients / (loss_mask.shape[1] if loss_scale_factor is None else loss_scale_factor)
    return coefficients


def _global(name: str, value, local: Tensor, dp_size: int):
    if value is None:
        if dp_size > 1:
            raise ValueError(f"verl_token_coefficients: `{name}` (over the whole data-parallel batch) is needed when "
                             f"dp_size > 1; got None with dp_size {dp_size}")
        return local
    return value


def micro_batch_loss(student_states: list[Tensor], offsets: Tensor, positions: Tensor, teacher_states: Tensor,
                     coefficients: Tensor, spec: ObjectiveSpec, plan: LayerPlan) -> Tensor:
    """Patch point 2, per micro-batch: the OPRD loss (times `spec.coefficient`) from the student's packed states at
    `plan.student` ([1, total_tokens, D] or [total_tokens, D] each), the nested input_ids' `offsets` [b + 1], the
    micro-batch's `oprd_positions` [b, R] and `oprd_teacher_states` [b, R, L_t, D], and per-token `coefficients`
    [b, R] (`verl_token_coefficients`)."""
    if len(student_states) != len(plan.student):
        raise ValueError(f"micro_batch_loss: one state tensor per distilled student layer {plan.student} is needed; "
                         f"got {len(student_states)}")
    if offsets.shape != (positions.shape[0] + 1,) or teacher_states.shape[:2] != positions.shape \
            or coefficients.shape != positions.shape:
        raise ValueError(f"micro_batch_loss: need offsets [b + 1], positions [b, R], teacher_states [b, R, L_t, D] "
                         f"and coefficients [b, R]; got {list(offsets.shape)}, {list(positions.shape)}, "
                         f"{list(teacher_states.shape)}, {list(coefficients.shape)}")
    selected = positions >= 0
    lengths = (offsets[1:] - offsets[:-1]).unsqueeze(1).expand_as(positions)
    if bool((positions[selected] >= lengths[selected]).any()):
        raise ValueError("micro_batch_loss: an `oprd_positions` entry lies past its row's length in `offsets` (the "
                         "teacher tensors were made for another batch or order)")
    rows = (offsets[:-1].unsqueeze(1) + positions)[selected]
    cache = teacher_states[selected].transpose(0, 1).contiguous()
    states = [s if s.dim() == 3 else s.unsqueeze(0) for s in student_states]
    layer_map = torch.tensor(plan.layer_map, device=rows.device)
    loss = oprd_kernels.alignment_loss(states, cache, rows=rows, weights=coefficients[selected].to(torch.float32),
                                       layer_map=layer_map, loss_type=spec.loss_type, backend=spec.backend)
    return spec.coefficient * loss
