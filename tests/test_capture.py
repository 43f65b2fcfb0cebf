"""oprd.capture on tiny random-weight HF decoders (no downloads): the captured states are HF's own, the teacher pass
stops early and never runs the LM head, gradients through captured states are the reference ones."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import oprd_kernels
from oprd.capture import capture_student, position_ids_from_mask, teacher_cache, teacher_cache_and_final
from oprd.capture.taps import _Tap
from oprd.positions import select_positions

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny(family: str, layers: int = 4, seed: int = 0, hidden: int = 32):
    torch.manual_seed(seed)
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(vocab_size=61, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return model_cls(config)


def rollout_batch(seed: int = 0):
    """3 samples of 11 positions: prompts left-padded into columns 0..3, responses of 7, 3 and 0 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 61, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :1] = 0
    mask[1, :3] = 0
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    response = mask.clone()
    response[:, :4] = 0
    return ids, mask, response


def hf_states(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                 output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", list(FAMILIES))
def test_captured_states_are_hf_hidden_states(family):
    model = tiny(family)
    ids, mask, response = rollout_batch()
    reference = hf_states(model, ids, mask)
    student = capture_student(model, ids, mask, [0, 1, 3, 4], final_state=True)
    assert student.indices == [0, 1, 3, 4]
    for state, index in zip(student.states, student.indices):
        assert torch.equal(state, reference[index])
    assert torch.equal(student.final, reference[4])
    rows, _ = select_positions(response, "last_k", 2)
    cache = teacher_cache(model, ids, mask, "even", rows, dtype=torch.float32)
    expected = torch.stack([reference[i].reshape(-1, 32)[rows] for i in (1, 3)])
    assert cache.shape == (2, rows.numel(), 32) and torch.equal(cache, expected)
    bf16 = teacher_cache(model, ids, mask, "even", rows)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, expected.bfloat16())


def count_calls(model):
    calls = {"norm": 0, "lm_head": 0, **{f"layer{i}": 0 for i in range(len(model.model.layers))}}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(counter(f"layer{i}"))
    model.model.norm.register_forward_hook(counter("norm"))
    model.lm_head.register_forward_hook(counter("lm_head"))
    return calls


def test_teacher_pass_stops_after_the_deepest_selected_layer():
    model = tiny("llama", layers=6)
    calls = count_calls(model)
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "all")
    teacher_cache(model, ids, mask, [1, 3], rows)
    assert [calls[f"layer{i}"] for i in range(6)] == [1, 1, 1, 0, 0, 0]  # index 3 = output of block 2
    assert calls["norm"] == 0 and calls["lm_head"] == 0
    teacher_cache(model, ids, mask, "last", rows)
    assert all(calls[f"layer{i}"] >= 1 for i in range(6)) and calls["norm"] == 1 and calls["lm_head"] == 0
    teacher_cache(model, ids, mask, [0], rows)  # embeddings only: no block runs
    assert calls["layer0"] == 2


@pytest.mark.parametrize("layers", [[1, 3], [2, 6], [0]])
def test_one_teacher_pass_gives_the_cache_and_the_final_state(layers):
    model = tiny("llama", layers=6)
    calls = count_calls(model)
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "last_k", 3)
    with torch.no_grad():
        reference = hf_states(model, ids, mask)
    before = dict(calls)
    cache, final = teacher_cache_and_final(model, ids, mask, layers, rows)
    assert calls["layer5"] == before["layer5"] + 1 and calls["lm_head"] == before["lm_head"]  # one pass, no head
    assert torch.equal(cache, teacher_cache(model, ids, mask, layers, rows))
    assert final.shape == reference[6].shape and torch.equal(final, reference[6])


def test_student_pass_skips_the_lm_head_and_unneeded_blocks():
    model = tiny("qwen2", layers=5)
    calls = count_calls(model)
    ids, mask, _ = rollout_batch()
    capture_student(model, ids, mask, [2])
    assert [calls[f"layer{i}"] for i in range(5)] == [1, 1, 0, 0, 0] and calls["norm"] == 0
    capture_student(model, ids, mask, [2], final_state=True)
    assert calls["layer4"] == 1 and calls["norm"] == 1 and calls["lm_head"] == 0


def test_the_model_is_restored_even_when_the_forward_fails():
    model = tiny("llama")
    ids, mask, _ = rollout_batch()
    with pytest.raises(Exception):
        capture_student(model, ids[:, :0], mask[:, :0], "all")  # an empty sequence makes the model raise
    assert not any(isinstance(layer, _Tap) for layer in model.model.layers)
    capture_student(model, ids, mask, "all")
    assert not any(isinstance(layer, _Tap) for layer in model.model.layers)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("checkpointing", [None, "non-reentrant", "reentrant"])
def test_parameter_gradients_equal_the_hf_hidden_states_path(backend, checkpointing):
    student, teacher = tiny("llama", layers=3, seed=1), tiny("llama", layers=5, seed=2)
    ids, mask, response = rollout_batch(seed=3)
    rows, weights = select_positions(response, "last_k", 3, weighting="sample")
    from oprd.layers import hidden_state_pairs

    s_layers = [1, 2, 3]
    t_layers = hidden_state_pairs(s_layers, 3, 5)
    cache = teacher_cache(teacher, ids, mask, t_layers, rows, dtype=torch.float32)

    want_model = student
    hs = hf_states(want_model, ids, mask)
    want = oprd_kernels.reference.alignment_loss([hs[i] for i in s_layers], cache, rows=rows, weights=weights,
                                                 loss_type="nmse")
    want.backward()  # .backward() and .grad: reentrant checkpointing refuses torch.autograd.grad
    want_grads = [None if p.grad is None else p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)

    if checkpointing:
        enable = getattr(student, "activation_checkpointing_enable", None) or student.gradient_checkpointing_enable
        kwargs = {"use_reentrant": checkpointing == "reentrant"}
        try:
            enable(activation_checkpointing_kwargs=kwargs)
        except TypeError:  # transformers before the rename
            enable(gradient_checkpointing_kwargs=kwargs)
        student.train()
        assert all(layer.gradient_checkpointing for layer in student.model.layers)
    states = capture_student(student, ids, mask, s_layers)
    got = oprd_kernels.alignment_loss(states.states, cache, rows=rows, weights=weights, loss_type="nmse",
                                      backend=backend)
    got.backward()
    got_grads = [p.grad for p in student.parameters()]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for (name, _), g, w in zip(student.named_parameters(), got_grads, want_grads):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0, name
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
    assert any(w is not None and w.abs().sum() > 0 for w in want_grads)


def test_bridge_projection_cache():
    teacher = tiny("llama", layers=4)
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "all")
    g = torch.Generator().manual_seed(0)
    proj_t, mean_t = torch.randn(2, 5, 32, generator=g), torch.randn(2, 32, generator=g)
    z = teacher_cache(teacher, ids, mask, [2, 4], rows, projection=(proj_t, mean_t))
    hs = hf_states(teacher, ids, mask)
    want = oprd_kernels.project_teacher([hs[2].reshape(-1, 32)[rows], hs[4].reshape(-1, 32)[rows]], proj_t, mean_t)
    assert z.dtype == torch.float32 and z.shape == (2, rows.numel(), 5)
    torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)


def test_bad_input_is_named():
    model = tiny("llama", layers=4)
    ids, mask, response = rollout_batch()
    rows, _ = select_positions(response, "all")
    with pytest.raises(ValueError, match=r"capture_student: `layers`.*\[0, 4\].*got 5"):
        capture_student(model, ids, mask, [5])
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                      eos_token_id=0))
    with pytest.raises(ValueError, match=r"model family 'gpt2'.*supported families: \['llama', 'qwen2'"):
        capture_student(gpt2, ids, mask, "all")
    with pytest.raises(ValueError, match=r"`attention_mask` must have input_ids' shape \(3, 11\)"):
        teacher_cache(model, ids, mask[:, :-1], "all", rows)
    with pytest.raises(TypeError, match=r"`input_ids` must be an integer tensor \[B, S\]"):
        capture_student(model, ids.float(), mask, "all")
    other_batch_rows = torch.tensor([0, 40])  # fine for a [4, 11] batch, not for this [3, 11] one
    with pytest.raises(ValueError, match=r"`rows` must index this batch's 33 positions"):
        teacher_cache(model, ids, mask, "all", other_batch_rows)
    with pytest.raises(ValueError, match=r"`rows` must be a 1-D int64 tensor"):
        teacher_cache(model, ids, mask, "all", rows.int())
    with pytest.raises(ValueError, match=r"`projection` P_T must be \[L_sel, r, D\]"):
        teacher_cache(model, ids, mask, [1, 2], rows, projection=(torch.zeros(3, 4, 32), torch.zeros(2, 32)))
