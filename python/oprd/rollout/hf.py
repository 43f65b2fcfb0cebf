"""Student rollouts with Hugging Face `generate`: left-padded prompts, n sampled responses each, cut at EOS, laid
out as `oprd.rollout.batch.Rollouts`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from oprd.parallel.fsdp_check import is_fsdp_module
from oprd.rollout.batch import Rollouts, eos_token_ids, response_mask_from
from oprd.rollout.prompt_format import encode_prompt_texts


def encode_prompts(tokenizer, prompts: Sequence[str], device: torch.device,
                   chat_template: str = "auto") -> tuple[Tensor, Tensor]:
    """Left-padded [B, P] ids and attention mask: each prompt in the tokenizer's chat template, or plainly with BOS
    when the tokenizer adds one (`oprd.rollout.prompt_format`: which, under `chat_template`)."""
    if tokenizer.padding_side != "left":
        raise ValueError(f"encode_prompts: the tokenizer must pad on the left for generation; got "
                         f"padding_side={tokenizer.padding_side!r}")
    batch = encode_prompt_texts(tokenizer, prompts, chat_template, func="encode_prompts", return_tensors="pt",
                                padding=True)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.no_grad()
def generate_rollouts(model: nn.Module, tokenizer, prompts: Sequence[str], *, responses_per_prompt: int,
                      max_new_tokens: int, temperature: float, top_p: float,
                      vocab_limit: int | None = None, chat_template: str = "auto") -> Rollouts:
    """Sample `responses_per_prompt` responses per prompt from `model` (its current weights: on-policy).
    vocab_limit: never sample ids at or above it (the student's head rows a differently padded teacher lacks).
    chat_template: "auto" encodes prompts in the tokenizer's chat template when it has one
    (oprd.rollout.prompt_format)."""
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    ids, mask = encode_prompts(tokenizer, prompts, device, chat_template)
    vocab = model.get_output_embeddings().weight.shape[0]
    extra = {} if vocab_limit is None or vocab_limit >= vocab else {"suppress_tokens": list(range(vocab_limit, vocab))}
    if is_fsdp_module(model) and torch.distributed.is_initialized():
        extra["synced_gpus"] = True  # each forward gathers from every rank: all ranks decode until the last is done
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=top_p,
                             top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=responses_per_prompt,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **extra)
    finally:
        model.train(was_training)
    width = ids.shape[1]
    responses = out[:, width:]
    resp_mask = response_mask_from(responses, eos)
    prompt_mask = mask.repeat_interleave(responses_per_prompt, dim=0)
    attention = torch.cat([prompt_mask, resp_mask], dim=1)
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    input_ids = torch.cat([out[:, :width], responses], dim=1)
    response_mask = torch.cat([torch.zeros_like(prompt_mask), resp_mask], dim=1)
    index = torch.arange(len(prompts), device=device).repeat_interleave(responses_per_prompt)
    return Rollouts(input_ids, attention, response_mask, width, index)
