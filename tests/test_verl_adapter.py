"""oprd.integrations.verl on tensors of verl's layout (verl 0.9.1 itself pins transformers < 5.11, below what this
project supports, so it is not installed): the teacher side and the actor loss equal `oprd train`'s objective on the
same rollouts, on padded states and on verl's packed (remove-padding) ones, gradients included."""

from __future__ import annotations

import pytest
import torch
from test_trainer import fixed_rollouts
from test_trl_integration import model

from oprd.capture import capture_student
from oprd.integrations.verl import actor_loss, packed_rows, rollouts_from_batch, teacher_side
from oprd.objective import ObjectiveSpec, compute_objective, plan_layers


def verl_batch(rollouts) -> dict:
    width = rollouts.prompt_width
    return {"input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask,
            "position_ids": (rollouts.attention_mask.cumsum(1) - 1).clamp_min(0),
            "responses": rollouts.input_ids[:, width:], "response_mask": rollouts.response_mask[:, width:]}


def grads(module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def packed_states(states: list[torch.Tensor], attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """verl's remove-padding layout: the attended tokens of every row, concatenated, [1, total_tokens, D]."""
    keep = attention_mask.reshape(-1).bool()
    return [s.reshape(-1, s.shape[-1])[keep].unsqueeze(0) for s in states]


def assert_same_as_objective(got: torch.Tensor, student, teacher, rollouts, spec, plan) -> None:
    """`got` (not yet backpropagated) has compute_objective's loss and student gradients on the same rollouts."""
    got.backward()
    got_grads = grads(student)
    want = compute_objective(spec, student, teacher, rollouts, plan).loss
    want.backward()
    want_grads = grads(student)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_the_actor_loss_equals_the_objective_on_the_same_rollouts(packed):
    student, teacher = model(0, 2), model(1, 3)
    spec = ObjectiveSpec(method="oprd", positions="last_k", k=4, coefficient=2.0, loss_type="nmse")
    plan = plan_layers(spec, student, teacher)
    rollouts = fixed_rollouts(student)
    batch = verl_batch(rollouts)
    assert torch.equal(rollouts_from_batch(batch).response_mask, rollouts.response_mask)
    side = teacher_side(teacher, batch, spec, plan)
    states = capture_student(student, batch["input_ids"], batch["attention_mask"], plan.student).states
    if packed:
        states = packed_states(states, batch["attention_mask"])
    got = actor_loss(states, side, batch["attention_mask"], spec, plan, packed=packed)
    assert_same_as_objective(got, student, teacher, rollouts, spec, plan)


def test_packed_rows_map_padded_positions_to_packed_ones():
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left and right padding
    rows = torch.tensor([2, 3, 5, 9, 13, 14])
    assert packed_rows(mask, rows).tolist() == [1, 2, 3, 7, 9, 10]
    with pytest.raises(ValueError, match="padding position"):
        packed_rows(mask, torch.tensor([0]))


def test_a_batch_without_verls_keys_or_shapes_is_refused():
    with pytest.raises(ValueError, match=r"missing \['response_mask'\]"):
        rollouts_from_batch({"input_ids": torch.zeros(2, 5), "attention_mask": torch.ones(2, 5)})
    with pytest.raises(ValueError, match=r"response_mask \[B, R\]"):
        rollouts_from_batch({"input_ids": torch.zeros(2, 5), "attention_mask": torch.ones(2, 5),
                             "response_mask": torch.ones(3, 2)})
