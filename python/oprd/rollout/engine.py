"""What every rollout engine offers the trainer: `generate` (prompts -> `Rollouts` in the layout of
`oprd.rollout.batch`) and `sync` (the student's new weights, after each optimizer step). `Sampling` holds one
call's settings. Engines: `hf.HFEngine` (Hugging Face `generate` on the student itself: nothing to sync),
`vllm_engine.VLLMEngine` (vLLM in the trainer's process) and `vllm_server.VLLMServerEngine` (a vLLM server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from torch import Tensor

from oprd.rollout.batch import Rollouts


@dataclass(frozen=True)
class Sampling:
    responses_per_prompt: int
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float = 1.0
    vocab_limit: int | None = None  # never sample ids at or above it
    chat_template: str = "auto"
    seed: int = 0  # engines with per-request random streams (vLLM) derive each row's from it; HF uses torch's stream


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> Rollouts:
        """`sampling.responses_per_prompt` responses per prompt, rows ordered prompt-major."""

    def sync(self, state: Mapping[str, Tensor]) -> None:
        """Serve the student's weights `state` (its whole state dict, HF names) from now on."""

    def close(self) -> None:
        """Free what the engine holds."""


def row_seed(seed: int, row: int) -> int:
    """A 63-bit seed per rollout row: vLLM draws one request's samples from its own generator, and requests with
    equal seeds and prompts would sample equal responses."""
    return (seed * 0x9E3779B97F4A7C15 + row * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)
