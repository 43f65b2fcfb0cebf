"""The rollout batch every other part of `oprd` reads, whatever engine sampled it.

Columns 0..P-1 hold the prompts, left-padded to a common width P; columns P.. hold the responses, right-padded.
`response_mask` marks the response tokens up to and including the first EOS (any id of the model's EOS set).
Position t of a model's output predicts token t + 1, so the logits for the responses are at columns P-1 .. P+T-2.
An engine fills this layout from its samples with `response_mask_from` and the EOS set of `eos_token_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn


@dataclass
class Rollouts:
    input_ids: Tensor  # [B, P + T]: prompts (left-padded) then responses (right-padded)
    attention_mask: Tensor  # [B, P + T]: 1 on real tokens (prompt and response up to EOS)
    response_mask: Tensor  # [B, P + T]: 1 on response tokens up to and including the first EOS
    prompt_width: int  # P
    prompt_index: Tensor  # [B]: which prompt of the step each row answers
    teacher: object | None = None  # another tokenizer's teacher: its view of the rows (token_alignment.TeacherView)
    sampled_log_probs: Tensor | None = None  # [B, T]: the engine's log-prob of each response token (vLLM), else 0

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


def rollouts_from_samples(prompt_ids: Tensor, prompt_mask: Tensor, samples: Sequence[Sequence[int]],
                          responses_per_prompt: int, eos_token_ids: Sequence[int], pad_token_id: int,
                          log_probs: Sequence[Sequence[float]] | None = None) -> Rollouts:
    """The layout from an engine's samples: `prompt_ids`/`prompt_mask` [P_count, P] left-padded as `encode_prompts`
    makes them, `samples` one token list per row (prompt-major, `responses_per_prompt` rows a prompt, each ending at
    its EOS or at the length limit), `log_probs` the engine's log-prob of each sampled token (optional)."""
    if len(samples) != prompt_ids.shape[0] * responses_per_prompt:
        raise ValueError(f"rollouts_from_samples: expected {prompt_ids.shape[0]} x {responses_per_prompt} samples; "
                         f"got {len(samples)}")
    width = max(1, max(len(s) for s in samples))
    device = prompt_ids.device
    responses = torch.full((len(samples), width), pad_token_id, dtype=prompt_ids.dtype)
    for row, tokens in enumerate(samples):
        responses[row, :len(tokens)] = torch.as_tensor(list(tokens), dtype=prompt_ids.dtype)
    responses = responses.to(device)
    resp_mask = response_mask_from(responses, eos_token_ids)
    resp_mask[:, max(len(s) for s in samples):] = 0  # every sample empty: the one padding column is no response
    for row, tokens in enumerate(samples):  # a sample cut at the length limit holds no EOS: mask only its tokens
        resp_mask[row, len(tokens):] = 0
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, pad_token_id))
    prompt_rows = prompt_mask.repeat_interleave(responses_per_prompt, dim=0)
    input_ids = torch.cat([prompt_ids.repeat_interleave(responses_per_prompt, dim=0), responses], dim=1)
    index = torch.arange(prompt_ids.shape[0], device=device).repeat_interleave(responses_per_prompt)
    out = Rollouts(input_ids, torch.cat([prompt_rows, resp_mask], dim=1),
                   torch.cat([torch.zeros_like(prompt_rows), resp_mask], dim=1), prompt_ids.shape[1], index)
    if log_probs is not None:
        table = torch.zeros(len(samples), width, dtype=torch.float32)
        for row, values in enumerate(log_probs):
            table[row, :len(values)] = torch.as_tensor(list(values), dtype=torch.float32)
        out.sampled_log_probs = table.to(device) * resp_mask
    return out


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
