"""Supervised fine-tuning on (prompt, solution) pairs: how the demo makes its teacher, and its weaker student (an
earlier checkpoint of the same run, as the paper's student relates to its teacher).

The loss is the mean next-token cross-entropy over the solution tokens and the closing EOS; prompt tokens are not
predicted. Batches are left-padded like rollouts, so the models learn the layout they will be sampled in.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from oprd.capture import position_ids_from_mask
from oprd.rollout.prompt_format import prompt_ids


def sft_batch(tokenizer, prompts: Sequence[str], solutions: Sequence[str], device: torch.device,
              chat_template: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, labels) with labels -100 everywhere but the solution tokens and EOS. Prompts are
    encoded as rollouts encode them (`oprd.rollout.prompt_format`: the chat template, or plainly with BOS)."""
    rows, label_rows = [], []
    for p, solution in zip(prompt_ids(tokenizer, prompts, chat_template), solutions):
        s = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + s)
        label_rows.append([-100] * len(p) + s)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    labels = torch.tensor([[-100] * (width - len(r)) + r for r in label_rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask, labels


def sft_loss(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                       ignore_index=-100)


def train_sft(model: nn.Module, tokenizer, examples: Sequence, *, steps: int, batch_size: int, lr: float,
              seed: int, on_step: Callable[[int, nn.Module, float], None] | None = None,
              chat_template: str = "auto") -> list[float]:
    """AdamW with linear warm-up (5%) and cosine decay; `examples` have .prompt and .solution. Calls
    on_step(step, model, loss) after every step (1-based), e.g. to save the student checkpoint. Returns the losses.
    chat_template: how prompts are encoded (`sft_batch`)."""
    device = next(model.parameters()).device
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(s / steps * 3.14159))))
    losses = []
    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(list(examples), min(batch_size, len(examples)))
        ids, mask, labels = sft_batch(tokenizer, [e.prompt for e in batch], [e.solution for e in batch], device,
                                       chat_template)
        loss = sft_loss(model, ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, model, losses[-1])
    return losses
