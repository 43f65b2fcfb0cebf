"""oprd.train.memory_plan: the parameter counts equal real models' (Qwen2-style with q/k/v biases and tied embeddings,
Llama-style untied), the paper's sizes come out as published, and the plan's totals follow from its parts."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from oprd.train.memory_plan import QWEN25_1_5B, QWEN25_7B, STATE_BYTES, Shape, Step, plan


def unique_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("tied", [True, False])
def test_the_counts_equal_a_qwen2_models(tied):
    config = Qwen2Config(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=tied)
    shape = Shape("tiny", layers=3, hidden=48, ffn=80, heads=6, kv_heads=2, vocab=97, tied=tied, qkv_bias=True)
    assert shape.parameters == unique_parameters(Qwen2ForCausalLM(config))


def test_the_counts_equal_a_llama_models():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    shape = Shape("tiny", layers=2, hidden=32, ffn=64, heads=4, kv_heads=2, vocab=50, tied=False)
    assert shape.parameters == unique_parameters(LlamaForCausalLM(config))


def test_the_papers_sizes():
    assert QWEN25_1_5B.parameters == pytest.approx(1.54e9, rel=0.01)
    assert QWEN25_7B.parameters == pytest.approx(7.62e9, rel=0.01)
    fp32 = plan(QWEN25_7B, QWEN25_7B, "fp32 weights, fp32 AdamW", checkpointing=True)
    assert fp32["student weights"] + fp32["gradients"] + fp32["optimizer states"] == pytest.approx(
        16 * QWEN25_7B.parameters / 1e9)  # the "about 122 GB" before teacher and activations


def test_the_total_is_the_larger_phase_over_the_resident_parts():
    step = Step(micro_batch_tokens=4096, distilled_rows=4096, rollout_sequences=64, rollout_tokens=8192)
    for states in STATE_BYTES:
        for checkpointing in (False, True):
            gb = plan(QWEN25_1_5B, QWEN25_7B, states, checkpointing, step)
            resident = gb["student weights"] + gb["optimizer states"] + gb["teacher (bf16)"]
            update = gb["gradients"] + gb["activations"] + gb["teacher cache"]
            assert gb["total"] == pytest.approx(resident + max(update, gb["rollout KV cache"]))
    on = plan(QWEN25_7B, QWEN25_7B, "bf16 weights, fp32 AdamW", True, step)["activations"]
    off = plan(QWEN25_7B, QWEN25_7B, "bf16 weights, fp32 AdamW", False, step)["activations"]
    assert on < off / 5  # checkpointing keeps one D per token per block, plus one block's recompute
