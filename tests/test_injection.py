"""Gradient injection gives the loss and the parameter gradients of the plain fused loss."""

from __future__ import annotations

import pytest
import torch
from test_capture import rollout_batch, tiny

import oprd_kernels
from oprd.capture import capture_student, teacher_cache
from oprd.injection import injected_alignment_loss
from oprd.layers import hidden_state_pairs
from oprd.positions import select_positions


def parameter_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("loss_type", ["mse", "cosine"])
@pytest.mark.parametrize("scale", [1.0, -3.0])
def test_same_value_and_parameter_gradients_as_the_plain_loss(backend, loss_type, scale):
    student, teacher = tiny("qwen2", layers=3, seed=4), tiny("qwen2", layers=4, seed=5)
    ids, mask, response = rollout_batch(seed=6)
    rows, weights = select_positions(response, "last_k", 4)
    s_layers = [0, 1, 2, 3]
    layer_map = torch.tensor([0, 1, 1, 2])  # student index -> teacher cache layer
    t_layers = sorted(set(hidden_state_pairs(s_layers, 3, 4)))
    cache = teacher_cache(teacher, ids, mask, t_layers, rows, dtype=torch.float32)
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, backend=backend)

    plain = oprd_kernels.alignment_loss(capture_student(student, ids, mask, s_layers).states, cache, **kw)
    (scale * plain).backward()
    want = parameter_grads(student)
    student.zero_grad(set_to_none=True)

    injected = injected_alignment_loss(capture_student(student, ids, mask, s_layers).states, cache, **kw)
    (scale * injected).backward()
    got = parameter_grads(student)

    torch.testing.assert_close(injected, plain, rtol=1e-6, atol=1e-8)
    assert set(got) == set(want) and len(want) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)


def test_without_gradients_it_is_just_the_value():
    student, teacher = tiny("llama", layers=2), tiny("llama", layers=2, seed=1)
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "all")
    cache = teacher_cache(teacher, ids, mask, "all", rows)
    with torch.no_grad():
        states = capture_student(student, ids, mask, "all").states
    out = injected_alignment_loss(states, cache, rows=rows)
    assert out.grad_fn is None
    torch.testing.assert_close(out, oprd_kernels.alignment_loss(states, cache, rows=rows))
