"""The in-process vLLM engine against Hugging Face `generate`, on real vLLM (the CPU build): the same `Rollouts`
layout on greedy decoding, weight sync taking effect, vLLM's sampled-token log-probs equal to the trainer's in fp32,
per-row seeds, the padded-head limit. Runs in the vLLM venv (scripts/test.sh's second stage)."""

from __future__ import annotations

import pytest
import torch
from vllm_models import TOKENIZER, prompt_texts, vllm_model

from oprd.rollout import eos_token_ids
from oprd.rollout.engine import Sampling
from oprd.rollout.hf import HFEngine
from oprd.rollout.vllm_engine import VLLMEngine
from oprd.rollout.vllm_settings import plan_vllm
from oprd.train.rollout_engines import logprob_gap

LAYOUT = ("input_ids", "attention_mask", "response_mask", "prompt_index")
PROMPTS = prompt_texts(5) + ["7+8="]  # different lengths: the prompts are left-padded to a common width


@pytest.fixture(scope="module")
def engine():
    """One engine for the module (each costs seconds); tests sync the weights they need."""
    model = vllm_model(0, extra_rows=3)
    settings = plan_vllm(model.config, device="cpu", dtype="float32", max_model_len=0, kv_cache_mb=16,
                         gpu_memory_utilization=0.3, max_new_tokens=24)
    engine = VLLMEngine(model.config, TOKENIZER, eos_token_ids(model, TOKENIZER), settings)
    yield engine
    engine.close()


def same_layout(a, b) -> bool:
    return a.prompt_width == b.prompt_width and all(torch.equal(getattr(a, k), getattr(b, k)) for k in LAYOUT)


@pytest.mark.parametrize("eos_bias", [0.0, 4.0])  # 4.0: most rows end at EOS early, at different lengths
def test_greedy_rollouts_equal_hf_generate_layout(engine, eos_bias):
    model = vllm_model(0, extra_rows=3, eos_bias=eos_bias)
    engine.sync(model.state_dict())
    sampling = Sampling(responses_per_prompt=2, max_new_tokens=24, temperature=0.0)
    ours, theirs = engine.generate(PROMPTS, sampling), HFEngine(model, TOKENIZER).generate(PROMPTS, sampling)
    assert same_layout(ours, theirs)
    lengths = ours.response_lengths
    if eos_bias:
        assert lengths.min() < 24 and len(set(lengths.tolist())) > 1  # the case this parameter is for


def test_a_weight_sync_takes_effect_and_without_it_the_engine_is_stale(engine):
    old, new = vllm_model(0, extra_rows=3), vllm_model(5, extra_rows=3)
    sampling = Sampling(responses_per_prompt=1, max_new_tokens=16, temperature=0.0)
    engine.sync(old.state_dict())
    stale = engine.generate(PROMPTS, sampling)
    wanted = HFEngine(new, TOKENIZER).generate(PROMPTS, sampling)
    assert not same_layout(stale, wanted)
    engine.sync(new.state_dict())
    assert same_layout(engine.generate(PROMPTS, sampling), wanted)


@pytest.mark.parametrize("temperature", [1.0, 0.7])  # vLLM reports raw log-probs: the temperature must not leak in
def test_sampled_log_probs_equal_the_trainers_in_fp32(engine, temperature):
    model = vllm_model(3, extra_rows=3)
    engine.sync(model.state_dict())
    rollouts = engine.generate(PROMPTS, Sampling(2, 20, temperature, seed=11))
    total, count = logprob_gap(model, rollouts)
    assert count == int(rollouts.response_mask.sum()) > 0
    assert total / count < 1e-4
    mask = rollouts.response_mask[:, rollouts.prompt_width:].bool()
    assert bool((rollouts.sampled_log_probs[mask] < 0).all()) and bool((rollouts.sampled_log_probs[~mask] == 0).all())


def test_rows_draw_from_their_own_seeded_streams(engine):
    engine.sync(vllm_model(0, extra_rows=3).state_dict())
    a, b = (engine.generate(PROMPTS, Sampling(2, 16, 1.0, seed=7)) for _ in range(2))
    c = engine.generate(PROMPTS, Sampling(2, 16, 1.0, seed=8))
    assert same_layout(a, b)  # the same seed: the same rows (what a resumed run relies on)
    assert not same_layout(a, c)
    first, second = a.responses[0::2], a.responses[1::2]  # the two responses of each prompt
    assert not torch.equal(first, second)


def test_sampling_never_leaves_the_vocab_limit(engine):
    engine.sync(vllm_model(0, extra_rows=3).state_dict())
    limit = len(TOKENIZER)
    with torch.no_grad():  # the padded rows would win every draw if allowed
        model = vllm_model(0, extra_rows=3)
        model.lm_head.weight[limit:] = 50 * model.model.norm.weight
    engine.sync(model.state_dict())
    rollouts = engine.generate(PROMPTS, Sampling(2, 12, 1.0, vocab_limit=limit, seed=3))
    assert int(rollouts.responses.max()) < limit
    unlimited = engine.generate(PROMPTS, Sampling(2, 12, 1.0, seed=3))
    assert int(unlimited.responses.max()) >= limit  # the limit is what kept them out


def test_a_prompt_longer_than_the_model_length_is_refused(engine):
    sampling = Sampling(1, engine.settings.max_model_len - 3, 0.0)
    with pytest.raises(ValueError, match="rollout.vllm_max_model_len"):
        engine.generate(["12+34="], sampling)
