"""Tiny local Hugging Face model directories for the CLI and preflight tests (random weights, no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.tasks.tokenizers import build_char_tokenizer

TOKENIZER = build_char_tokenizer()


def save_tiny_model(directory: Path, hidden: int = 32, layers: int = 2, tokenizer: bool = True,
                    **save_kwargs) -> Path:
    """A 2-block Llama of width `hidden` saved with `save_pretrained(**save_kwargs)`, plus the char tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=TOKENIZER.pad_token_id, bos_token_id=TOKENIZER.bos_token_id,
                         eos_token_id=TOKENIZER.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory, **save_kwargs)
    if tokenizer:
        TOKENIZER.save_pretrained(directory)
    return Path(directory)
