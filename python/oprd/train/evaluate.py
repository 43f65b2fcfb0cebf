"""avg@k evaluation: k sampled responses per prompt, each graded against the reference answer.

Evaluation samples under its own fixed seed inside `torch.random.fork_rng`: its results do not depend on when it
runs, and it does not disturb the training run's random stream (a resumed run stays identical).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from oprd.rollout import generate_rollouts

Grader = Callable[[str, str], bool]


def default_grader(response: str, answer: str) -> bool:
    """Exact match of the final answer: the last \\boxed{...} if any, else the last number in the response."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", response)
    if boxed:
        return boxed[-1].strip() == answer.strip()
    numbers = re.findall(r"-?\d+(?:\.\d+)?", response)
    return bool(numbers) and numbers[-1] == answer.strip()


@dataclass(frozen=True)
class EvalCounts:
    """What avg@k is computed from: graded responses, correct ones, and their summed token lengths. Counts of
    disjoint prompt sets add up (several processes each evaluate a share)."""

    correct: int = 0
    total: int = 0
    length: int = 0

    def metrics(self) -> dict[str, float]:
        return {"eval/accuracy": self.correct / max(self.total, 1),
                "eval/response_length": self.length / max(self.total, 1)}


def evaluate(model: nn.Module, tokenizer, examples: Sequence[dict], *, samples: int, temperature: float,
             max_new_tokens: int, grader: Grader = default_grader, batch_prompts: int = 32,
             seed: int = 1234, chat_template: str = "auto") -> dict[str, float]:
    """{"eval/accuracy": avg@k accuracy, "eval/response_length": mean tokens} over `examples` (with "answer").
    chat_template: how prompts are encoded, as in training (`oprd.rollout.prompt_format`)."""
    return evaluation_counts(model, tokenizer, examples, samples=samples, temperature=temperature,
                             max_new_tokens=max_new_tokens, grader=grader, batch_prompts=batch_prompts, seed=seed,
                             chat_template=chat_template).metrics()


@torch.no_grad()
def evaluation_counts(model: nn.Module, tokenizer, examples: Sequence[dict], *, samples: int, temperature: float,
                      max_new_tokens: int, grader: Grader = default_grader, batch_prompts: int = 32,
                      seed: int = 1234, chat_template: str = "auto", graded: int | None = None) -> EvalCounts:
    """The counts behind `evaluate`'s metrics, over the first `graded` examples (all by default): the others only
    generate, so that sharded ranks with fewer prompts still make every collective call the others make."""
    graded = len(examples) if graded is None else graded
    correct = total = length = 0
    devices = [next(model.parameters()).device] if next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(examples), batch_prompts):
            chunk = examples[start:start + batch_prompts]
            rollouts = generate_rollouts(model, tokenizer, [e["prompt"] for e in chunk], responses_per_prompt=samples,
                                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                                         chat_template=chat_template)
            texts = tokenizer.batch_decode(rollouts.responses, skip_special_tokens=True)
            lengths = rollouts.response_lengths.tolist()
            for row, text in enumerate(texts):
                prompt = int(rollouts.prompt_index[row])
                if start + prompt < graded:
                    correct += bool(grader(text, chunk[prompt]["answer"]))
                    total += 1
                    length += int(lengths[row])
    return EvalCounts(correct, total, length)
