"""Student rollouts with Hugging Face `generate`: left-padded prompts, n sampled responses each, cut at EOS.

The batch layout is the one the rest of `oprd` expects. Columns 0..P-1 hold the prompts, left-padded to a common
width P; columns P.. hold the responses, right-padded. `response_mask` marks the response tokens up to and including
the first EOS (any id of the model's EOS set). Position t of a model's output predicts token t + 1, so the logits for
the responses are at columns P-1 .. P+T-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from oprd.parallel.fsdp_check import is_fsdp_module
from oprd.rollout.prompt_format import encode_prompt_texts


@dataclass
class Rollouts:
    input_ids: Tensor  # [B, P + T]: prompts (left-padded) then responses (right-padded)
    attention_mask: Tensor  # [B, P + T]: 1 on real tokens (prompt and response up to EOS)
    response_mask: Tensor  # [B, P + T]: 1 on response tokens up to and including the first EOS
    prompt_width: int  # P
    prompt_index: Tensor  # [B]: which prompt of the step each row answers
    teacher: object | None = None  # another tokenizer's teacher: its view of the rows (token_alignment.TeacherView)

    @property
    def responses(self) -> Tensor:
        """[B, T] response tokens (padding after EOS)."""
        return self.input_ids[:, self.prompt_width:]

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(dim=1)

    def response_logit_slice(self) -> slice:
        """Columns whose outputs predict the response tokens."""
        return slice(self.prompt_width - 1, self.input_ids.shape[1] - 1)


def concat_rollouts(parts: Sequence[Rollouts], pad_token_id: int) -> Rollouts:
    """One batch holding every row of `parts`: prompts left-padded and responses right-padded to the widest part.
    Position ids are counted from the attention mask, so the extra padding changes no real token's outputs."""
    if any(p.teacher is not None for p in parts):
        raise ValueError("concat_rollouts: rollouts with a teacher view (another tokenizer) cannot be concatenated; "
                         "build the view for the concatenated batch instead")
    width = max(p.prompt_width for p in parts)
    total = max(p.input_ids.shape[1] - p.prompt_width for p in parts)

    def widen(t: Tensor, p: Rollouts, fill: int) -> Tensor:
        left = width - p.prompt_width
        right = total - (t.shape[1] - p.prompt_width)
        return torch.nn.functional.pad(t, (left, right), value=fill)

    offsets = torch.cumsum(torch.tensor([0] + [int(p.prompt_index.max()) + 1 for p in parts[:-1]]), 0)
    return Rollouts(torch.cat([widen(p.input_ids, p, pad_token_id) for p in parts]),
                    torch.cat([widen(p.attention_mask, p, 0) for p in parts]),
                    torch.cat([widen(p.response_mask, p, 0) for p in parts]), width,
                    torch.cat([p.prompt_index + int(o) for p, o in zip(parts, offsets)]))


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


def eos_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """Every id that ends a response: the model's generation config's EOS set (an int or a list: Qwen2.5-Instruct
    and Llama-3 stop on several) and the tokenizer's EOS. Passing only the tokenizer's to `generate` would replace
    the model's list; a response that stopped on another id would then run on, or be masked as unfinished."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        for i in (source if isinstance(source, (list, tuple)) else [source]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("generate_rollouts: neither the model's generation config nor the tokenizer names an EOS "
                         "token; set generation_config.eos_token_id or the tokenizer's eos_token")
    return ids


def response_mask_from(responses: Tensor, eos_token_ids: Sequence[int]) -> Tensor:
    """1 on generated tokens up to and including the first EOS, any id of `eos_token_ids` (everything when none)."""
    is_eos = torch.isin(responses, torch.as_tensor(list(eos_token_ids), device=responses.device))
    before_or_at_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) == 0
    return before_or_at_eos.long()


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
