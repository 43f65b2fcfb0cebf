"""Prompt files and the order prompts are consumed in.

A prompt file is JSON lines, one object per prompt, with a prompt field and (for graded evaluation) an answer field.
Prompts are consumed in a seeded shuffled order, epoch after epoch. The position in that stream (the number of
prompts consumed) is all a checkpoint needs to resume at the same prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def load_prompts(path: str | Path, prompt_field: str = "prompt", answer_field: str = "") -> list[dict]:
    """[{"prompt": ..., "answer": ...}] from a JSONL file; every line must hold the required fields (as strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_prompts: prompt file {str(path)!r} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"load_prompts: {path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"load_prompts: {path}:{number} must be a JSON object; got {type(record).__name__}")
        item = {}
        for key, field in (("prompt", prompt_field), ("answer", answer_field)):
            if not field:
                continue
            if field not in record:
                raise ValueError(f"load_prompts: {path}:{number} has no field {field!r} (fields: {sorted(record)})")
            item[key] = str(record[field])
        prompts.append(item)
    if not prompts:
        raise ValueError(f"load_prompts: {path} holds no prompts")
    return prompts


class PromptStream:
    """Prompts in a seeded shuffled order, epoch after epoch; `take(n)` advances the position."""

    def __init__(self, prompts: list[dict], seed: int, position: int = 0) -> None:
        self.prompts, self.seed, self.position = prompts, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, len(self.prompts))
            out.append(self.prompts[self._order(epoch)[offset]])
            self.position += 1
        return out
