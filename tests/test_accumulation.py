"""Gradient accumulation normalises by the whole window: two unequal micro-batches give the gradient of the one
batch that holds both (the global token-mean), for every method and both OPRD weightings."""

from __future__ import annotations

import pytest
import torch
from bridges import bridge_for
from test_trainer import TOKENIZER, prompts, tiny_model

from oprd.objective import METHODS, ObjectiveSpec, compute_objective, plan_layers
from oprd.rollout import concat_rollouts, generate_rollouts
from oprd.train.accumulation import accumulate_gradients


def sample(student, n_prompts: int, max_new_tokens: int, seed: int):
    torch.manual_seed(seed)
    return generate_rollouts(student, TOKENIZER, [p["prompt"] for p in prompts(n_prompts, seed)],
                             responses_per_prompt=2, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("weighting", ["token", "sample"])
@pytest.mark.parametrize("method", METHODS)
def test_two_unequal_micro_batches_give_the_one_batch_gradient(method, weighting):
    student, teacher = tiny_model(0), tiny_model(1, layers=3)
    long, short = sample(student, 3, 14, 0), sample(student, 1, 4, 1)
    counts = [int(b.response_mask.sum()) for b in (long, short)]
    assert counts[0] > 2 * counts[1]  # unequal, or the test could not tell a mean of means from the global mean
    spec = ObjectiveSpec(method=method, topk=4, positions="last_k", k=6, weighting=weighting, backend="cpu")
    plan = plan_layers(spec, student, teacher, bridge_for(spec, student, teacher))

    metrics = accumulate_gradients(spec, student, teacher, [long, short], plan)
    accumulated = grads(student)
    student.zero_grad(set_to_none=True)
    one = compute_objective(spec, student, teacher, concat_rollouts([long, short], TOKENIZER.pad_token_id), plan)
    one.loss.backward()
    whole = grads(student)

    assert accumulated.keys() == whole.keys() and whole
    for name, g in whole.items():
        torch.testing.assert_close(accumulated[name], g, rtol=2e-4, atol=1e-6, msg=name)
    assert metrics["loss/total"] == pytest.approx(float(one.loss.detach()), rel=1e-5)


def test_concat_rollouts_pads_without_changing_the_rows():
    student = tiny_model(0)
    a, b = sample(student, 2, 9, 0), sample(student, 1, 3, 1)
    both = concat_rollouts([a, b], TOKENIZER.pad_token_id)
    assert both.input_ids.shape[0] == a.input_ids.shape[0] + b.input_ids.shape[0]
    assert both.prompt_width == max(a.prompt_width, b.prompt_width)
    assert torch.equal(both.prompt_index, torch.tensor([0, 0, 1, 1, 2, 2]))
    for part, rows in ((a, slice(0, 4)), (b, slice(4, 6))):
        got = both.responses[rows, : part.responses.shape[1]]
        assert torch.equal(got, part.responses)
        assert int(both.response_mask[rows].sum()) == int(part.response_mask.sum())
        assert int(both.attention_mask[rows].sum()) == int(part.attention_mask.sum())
