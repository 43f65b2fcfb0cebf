"""Tiny models vLLM can run (head size 32: its CPU attention has no smaller one) for the vLLM engine tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import build_char_tokenizer

TOKENIZER = build_char_tokenizer()


def vllm_model(seed: int = 0, extra_rows: int = 0, head_dim: int = 32, eos_bias: float = 0.0) -> LlamaForCausalLM:
    """A 2-block Llama of width 64 (2 heads of `head_dim`, 1 KV head), `extra_rows` head rows past the tokenizer's
    vocabulary (a padded head), and EOS made likelier by `eos_bias` so that some responses stop early."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER) + extra_rows, hidden_size=2 * head_dim, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
                         max_position_embeddings=256, pad_token_id=TOKENIZER.pad_token_id,
                         bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    if eos_bias:
        with torch.no_grad():
            model.lm_head.weight[TOKENIZER.eos_token_id] += eos_bias * model.model.norm.weight
    return model


def prompt_texts(n: int, seed: int = 0) -> list[str]:
    return [e.prompt for e in ArithmeticTask(2).sample(n, random.Random(seed))]


def write_run_inputs(folder: Path) -> Path:
    """student/ and teacher/ model directories (with the tokenizer) and prompts.jsonl under `folder`."""
    for name, seed in (("student", 0), ("teacher", 1)):
        vllm_model(seed).save_pretrained(folder / name)
        TOKENIZER.save_pretrained(folder / name)
    rows = [{"prompt": e.prompt, "answer": e.answer} for e in ArithmeticTask(2).sample(32, random.Random(0))]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
