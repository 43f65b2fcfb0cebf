"""Student rollouts with Hugging Face `generate`: left-padded prompts, n sampled responses each, cut at EOS, laid
out as `oprd.rollout.batch.Rollouts`. `HFEngine` is this engine behind the trainer's rollout seam
(`oprd.rollout.engine`): it samples from the student module itself, so a weight sync is nothing to do."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from oprd.parallel.fsdp_check import is_fsdp_module
from oprd.rollout.batch import Rollouts, eos_token_ids, response_mask_from
from oprd.rollout.engine import Sampling
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


def encode_prompt_tokens(tokenizer, prompts: Sequence[str], chat_template: str = "auto"
                         ) -> tuple[Tensor, Tensor, list[list[int]]]:
    """`encode_prompts` on the CPU, plus each prompt's token ids without the padding: what an engine that takes token
    prompts (vLLM) is sent, so that it sees the tokens `generate` would."""
    ids, mask = encode_prompts(tokenizer, prompts, torch.device("cpu"), chat_template)
    return ids, mask, [row[m.bool()].tolist() for row, m in zip(ids, mask)]


@torch.no_grad()
def generate_rollouts(model: nn.Module, tokenizer, prompts: Sequence[str], *, responses_per_prompt: int,
                      max_new_tokens: int, temperature: float, top_p: float,
                      vocab_limit: int | None = None, chat_template: str = "auto") -> Rollouts:
    """Sample `responses_per_prompt` responses per prompt from `model` (its current weights: on-policy); temperature
    0 decodes greedily. vocab_limit: never sample ids at or above it (the student's head rows a differently padded
    teacher lacks). chat_template: "auto" encodes prompts in the tokenizer's chat template when it has one
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
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                        "num_return_sequences": responses_per_prompt}
        else:  # greedy generate returns one sequence per input row: repeat the rows instead
            sampling = {"do_sample": False}
            ids, mask = ids.repeat_interleave(responses_per_prompt, 0), mask.repeat_interleave(responses_per_prompt, 0)
        out = model.generate(input_ids=ids, attention_mask=mask, **sampling, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **extra)
    finally:
        model.train(was_training)
    width = ids.shape[1]
    responses = out[:, width:]
    resp_mask = response_mask_from(responses, eos)
    prompt_mask = mask.repeat_interleave(out.shape[0] // mask.shape[0], dim=0)
    attention = torch.cat([prompt_mask, resp_mask], dim=1)
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    input_ids = torch.cat([out[:, :width], responses], dim=1)
    response_mask = torch.cat([torch.zeros_like(prompt_mask), resp_mask], dim=1)
    index = torch.arange(len(prompts), device=device).repeat_interleave(responses_per_prompt)
    return Rollouts(input_ids, attention, response_mask, width, index)


class HFEngine:
    """Rollouts from `model` itself through `generate_rollouts`, drawing on torch's global random stream."""

    name = "hf"

    def __init__(self, model: nn.Module, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> Rollouts:
        s = sampling
        return generate_rollouts(self.model, self.tokenizer, prompts, responses_per_prompt=s.responses_per_prompt,
                                 max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 vocab_limit=s.vocab_limit, chat_template=s.chat_template)

    def sync(self, state: Mapping[str, Tensor]) -> None:
        """Nothing to do: `generate` reads the module's current weights."""

    def close(self) -> None:
        pass
