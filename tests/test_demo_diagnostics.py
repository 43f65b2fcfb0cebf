"""The numbers that explain a demo result: LM-head distance, decoding through the teacher's head and norm, and the
last per-layer cosine."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_model

from oprd.demo.diagnostics import decoded_by_teacher, final_cosines, head_distance


def test_head_distance_is_the_relative_l2_of_the_heads():
    student, teacher = tiny_model(0), tiny_model(1)
    assert head_distance(teacher, teacher) == 0.0
    with torch.no_grad():
        student.lm_head.weight.copy_(teacher.lm_head.weight * 1.5)
    assert head_distance(student, teacher) == pytest.approx(0.5, rel=1e-6)


def test_decoding_through_the_teacher_changes_a_copy_only():
    student, teacher = tiny_model(0), tiny_model(1)
    before = {n: p.clone() for n, p in student.named_parameters()}
    probe = decoded_by_teacher(student, teacher)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())
    assert torch.equal(probe.lm_head.weight, teacher.lm_head.weight)
    assert torch.equal(probe.model.norm.weight, teacher.model.norm.weight)
    assert torch.equal(probe.model.layers[0].mlp.up_proj.weight, student.model.layers[0].mlp.up_proj.weight)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():  # same states, the teacher's decoding
        want = teacher.lm_head(teacher.model.norm(_pre_norm(student, ids)))
        torch.testing.assert_close(probe(ids).logits, want)


def _pre_norm(model, ids):
    """The last block's output before the final norm."""
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0]))
    model(ids)
    hook.remove()
    return captured["x"]


def test_final_cosines_reads_the_last_line_that_has_them():
    rows = [{"step": 1, "rep/cosine_similarity/layer1": 0.5}, {"step": 2, "rep/cosine_similarity/layer1": 0.7,
                                                                 "rep/cosine_similarity/layer2": 0.8},
            {"step": 3, "loss/total": 1.0}]
    assert final_cosines(rows) == {"1": 0.7, "2": 0.8}
    assert final_cosines([{"step": 1}]) == {}
