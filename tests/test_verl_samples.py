"""oprd.integrations.verl_samples: teacher states carried per sample survive verl's no-padding conversion and its
reordering micro-batch split, and the summed micro-batch losses equal `oprd train`'s objective, gradients included.
verl is not installed here (it pins transformers < 5.11); examples/verl/check_with_verl.py runs the same path through
verl's own functions in an environment that has it."""

from __future__ import annotations

import pytest
import torch
from test_trainer import fixed_rollouts
from test_trl_integration import model
from test_verl_adapter import assert_same_as_objective, packed_states, verl_batch

from oprd.capture import capture_student
from oprd.integrations.verl_samples import (
    POSITIONS,
    STATES,
    micro_batch_loss,
    teacher_sample_tensors,
    verl_token_coefficients,
)
from oprd.objective import ObjectiveSpec, plan_layers


@pytest.mark.parametrize("loss_type", ["mse", "nmse"])
def test_reordered_micro_batches_sum_to_the_objective(loss_type):
    student, teacher = model(0, 3), model(1, 4)
    spec = ObjectiveSpec(method="oprd", coefficient=1.5, loss_type=loss_type)
    plan = plan_layers(spec, student, teacher)
    rollouts = fixed_rollouts(student)
    batch = verl_batch(rollouts)
    side = teacher_sample_tensors(teacher, batch, spec, plan)
    width = batch["response_mask"].shape[1]
    assert side[POSITIONS].shape == (8, width) and side[STATES].shape == (8, width, len(plan.teacher), 32)
    assert torch.equal(side[POSITIONS] >= 0, batch["response_mask"].bool())
    total_tokens = int(batch["response_mask"].sum())
    got = 0.0
    for order in (torch.tensor([5, 0, 7]), torch.tensor([2, 6, 1, 3, 4])):  # verl reorders samples by length
        mask = batch["attention_mask"][order]
        offsets = torch.cat([mask.new_zeros(1), mask.sum(1).cumsum(0)])
        states = capture_student(student, batch["input_ids"][order], mask, plan.student).states
        coefficients = verl_token_coefficients(batch["response_mask"][order], "token-mean",
                                               batch_num_tokens=total_tokens)
        got = got + micro_batch_loss(packed_states(states, mask), offsets, side[POSITIONS][order],
                                     side[STATES][order], coefficients, spec, plan)
    assert_same_as_objective(got, student, teacher, rollouts, spec, plan)


def test_positions_index_each_rows_unpadded_sequence():
    student, teacher = model(0, 2), model(1, 2)
    spec = ObjectiveSpec(method="oprd", positions="last_k", k=2)
    plan = plan_layers(spec, student, teacher)
    batch = verl_batch(fixed_rollouts(student, n_prompts=2))
    side = teacher_sample_tensors(teacher, batch, spec, plan)
    for b in range(4):
        unpadded = batch["input_ids"][b][batch["attention_mask"][b].bool()]
        response = batch["responses"][b][batch["response_mask"][b].bool()]
        picked = side[POSITIONS][b][side[POSITIONS][b] >= 0]
        assert picked.tolist() == list(range(len(unpadded) - 2, len(unpadded)))  # the last 2 response tokens
        assert torch.equal(unpadded[picked], response[-2:])
        assert not side[STATES][b][side[POSITIONS][b] < 0].any()


def test_the_coefficients_aggregate_as_verls_modes_do():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    loss = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])

    def agg(mode, **kw):
        return float((verl_token_coefficients(mask, mode, **kw) * loss).sum())

    assert agg("token-mean") == pytest.approx(10 / 4)
    assert agg("token-mean", dp_size=2, batch_num_tokens=8) == pytest.approx(10 / 8 * 2)
    assert agg("token-sum", dp_size=3) == pytest.approx(30)
    assert agg("seq-mean-token-sum") == pytest.approx((6 + 4) / 2)  # the empty row is not a sequence
    assert agg("seq-mean-token-sum-norm") == pytest.approx((6 + 4) / 2 / 4)
    assert agg("seq-mean-token-sum-norm", loss_scale_factor=10) == pytest.approx((6 + 4) / 2 / 10)
    assert agg("seq-mean-token-mean", dp_size=2, global_batch_size=4) == pytest.approx((2 + 4) / 4 * 2, rel=1e-6)


def test_bad_inputs_are_refused_by_name():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="`loss_agg_mode` must be one of"):
        verl_token_coefficients(mask, "mean")
    with pytest.raises(ValueError, match="`batch_num_tokens`.*dp_size 2"):
        verl_token_coefficients(mask, "token-mean", dp_size=2)
    student, teacher = model(0, 2), model(1, 2)
    spec = ObjectiveSpec(method="oprd")
    plan = plan_layers(spec, student, teacher)
    states = [torch.zeros(1, 5, 32)] * len(plan.student)
    positions = torch.tensor([[0, 1, 2], [0, 3, -1]])
    teacher_states = torch.zeros(2, 3, len(plan.teacher), 32)
    with pytest.raises(ValueError, match="past its row's length"):
        micro_batch_loss(states, torch.tensor([0, 3, 5]), positions, teacher_states, mask, spec, plan)
    with pytest.raises(ValueError, match=r"offsets \[b \+ 1\]"):
        micro_batch_loss(states, torch.tensor([0, 5]), positions, teacher_states, mask, spec, plan)
    with pytest.raises(ValueError, match="one state tensor per distilled student layer"):
        micro_batch_loss(states[:1] * 0, torch.tensor([0, 3, 5]), positions, teacher_states, mask, spec, plan)
