"""method.name = oprd_bridge (Stage 2): the loss equals a hand computation on Hugging Face's own hidden states for
pairs of other depth and width, its gradient reaches only the student backbone, and the combined objective is the
sum of its parts."""

from __future__ import annotations

import pytest
import torch
from bridges import random_bridge
from test_trainer import TOKENIZER, fixed_rollouts
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.capture import position_ids_from_mask
from oprd.objective import ObjectiveSpec, compute_objective, distilled_positions, plan_layers


def model(seed: int, hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=TOKENIZER.pad_token_id,
                                        bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id))


def hand_bridge_loss(spec, student, teacher, rollouts, bridge, only=None):
    """coefficient * mean over layers of sum_rows w * ||z_S/|z_S| - z_T/|z_T|||^2, from output_hidden_states
    (over the student layers `only`, when given, of the bridge's)."""
    ids, mask = rollouts.input_ids, rollouts.attention_mask
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), output_hidden_states=True)
    s_states = student(**kw).hidden_states
    with torch.no_grad():
        t_states = teacher(**kw).hidden_states
    rows, weights = distilled_positions(spec, rollouts)
    per_layer = []
    for i, (s_index, slot) in enumerate(zip(bridge.student_layers, bridge.layer_map)):
        if only is not None and s_index not in only:
            continue
        h_s = s_states[s_index].reshape(-1, s_states[s_index].shape[-1])[rows]
        h_t = t_states[bridge.teacher_layers[slot]].reshape(-1, t_states[0].shape[-1])[rows]
        z_s = torch.nn.functional.normalize(h_s @ bridge.proj_s[i].T, dim=-1)
        z_t = torch.nn.functional.normalize((h_t - bridge.mean_t[slot]) @ bridge.proj_t[slot].T, dim=-1)
        per_layer.append((weights * ((z_s - z_t) ** 2).sum(-1)).sum())
    return spec.bridge_coefficient * torch.stack(per_layer).mean()


@pytest.mark.parametrize("shape", [((48, 2), (32, 3)), ((32, 4), (48, 2)), ((32, 3), (32, 3))],
                         ids=["shallow-narrow teacher: wider", "student deeper than teacher", "same shape"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_the_bridge_loss_and_gradient_equal_a_hand_computation(shape, backend):
    (t_hidden, t_layers), (s_hidden, s_layers) = shape
    teacher, student = model(1, t_hidden, t_layers), model(0, s_hidden, s_layers)
    bridge = random_bridge(student, teacher, rank=5)
    spec = ObjectiveSpec(method="oprd_bridge", positions="last_k", k=5, backend=backend)
    plan = plan_layers(spec, student, teacher, bridge)
    assert plan.student == bridge.student_layers and plan.teacher == bridge.teacher_layers
    if s_layers > t_layers:
        assert len(set(bridge.layer_map)) < len(bridge.layer_map)  # teacher layers shared: the gather path runs
    rollouts = fixed_rollouts(student)
    result = compute_objective(spec, student, teacher, rollouts, plan)
    result.loss.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    expected = hand_bridge_loss(spec, student, teacher, rollouts, bridge)
    expected.backward()
    expected = expected.detach()
    torch.testing.assert_close(result.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    want = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and got
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert not any(t.requires_grad for t in (bridge.proj_s, bridge.proj_t, bridge.mean_t))
    assert result.metrics["loss/oprd_bridge"] == pytest.approx(float(expected) / spec.bridge_coefficient, rel=1e-5)
    # rep/bridge_cosine is the weighted mean cosine: the loss is coefficient * (2 - 2 cos)
    assert result.metrics["rep/bridge_cosine"] == pytest.approx(1 - float(expected) / spec.bridge_coefficient / 2,
                                                                abs=1e-6)  # float32 of a loss near 2
    assert "rep/cosine_similarity" not in result.metrics  # the cache holds projections, not comparable states


def test_bridge_plus_opd_is_opd_plus_mu_times_the_bridge_loss():
    teacher, student = model(1, 48, 3), model(0, 32, 2)
    bridge = random_bridge(student, teacher, rank=3)
    rollouts = fixed_rollouts(student)
    common = dict(positions="all", backend="cpu")
    combined = ObjectiveSpec(method="oprd_bridge+opd", mu=2.5, **common)
    parts = [ObjectiveSpec(method="oprd_bridge", bridge_coefficient=1.0, **common),
             ObjectiveSpec(method="opd_top1", **common)]
    total = compute_objective(combined, student, teacher, rollouts, plan_layers(combined, student, teacher, bridge))
    bridge_part, opd_part = (float(compute_objective(s, student, teacher, rollouts,
                                                     plan_layers(s, student, teacher, bridge)).loss.detach())
                             for s in parts)
    assert float(total.loss) == pytest.approx(2.5 * bridge_part + opd_part, rel=1e-5)
    assert total.metrics["loss/oprd_bridge"] == pytest.approx(bridge_part, rel=1e-5)
    assert total.metrics["loss/opd"] == pytest.approx(opd_part, rel=1e-5)


def test_a_subset_of_the_bridges_layers_trains_those_layers_alone():
    teacher, student = model(1, 48, 4), model(0, 32, 3)
    bridge = random_bridge(student, teacher, rank=4)  # fitted for every layer: 1, 2, 3
    spec = ObjectiveSpec(method="oprd_bridge", positions="last_k", k=5, layers=[1, 3])
    plan = plan_layers(spec, student, teacher, bridge)
    assert plan.student == plan.bridge.student_layers == [1, 3]
    assert plan.teacher == [bridge.teacher_layers[bridge.layer_map[0]], bridge.teacher_layers[bridge.layer_map[2]]]
    rollouts = fixed_rollouts(student)
    got = compute_objective(spec, student, teacher, rollouts, plan).loss
    expected = hand_bridge_loss(spec, student, teacher, rollouts, bridge, only=[1, 3])
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_a_bridge_method_without_a_bridge_or_with_another_pairs_bridge_is_refused():
    from oprd.bridge import BridgeFileError

    teacher, student = model(1, 48, 3), model(0, 32, 2)
    spec = ObjectiveSpec(method="oprd_bridge")
    with pytest.raises(ValueError, match="needs a bridge file: set `bridge.path`"):
        plan_layers(spec, student, teacher)
    other = random_bridge(student, model(2, 32, 3))
    with pytest.raises(BridgeFileError, match="teacher with hidden_size 32"):
        plan_layers(spec, student, teacher, other)
    last_only = random_bridge(student, teacher, layers="last")
    with pytest.raises(BridgeFileError, match=r"aligns student layers \[2\]; `oprd.layers` selects \[1, 2\], not all"):
        plan_layers(spec, student, teacher, last_only)
