"""Prompt files and the order prompts are consumed in.

A prompt file is UTF-8 JSON lines, one object per prompt, with a prompt field and (for graded evaluation) an answer
field, both strings (an answer may be an integer). Lines are split at "\\n" only (a JSON string may hold U+2028
and other Unicode line breaks). Prompts are consumed in a seeded shuffled order, epoch after epoch. The position in
that stream (the number of prompts consumed) is all a checkpoint needs to resume at the same prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


class MissingFieldError(ValueError):
    """A line of a prompt file lacks a required field; callers add what to do (which key or flag to change)."""

    def __init__(self, message: str, field: str, kind: str) -> None:
        super().__init__(message)
        self.field, self.kind = field, kind  # kind: "prompt" or "answer"


def _lines(path: Path):
    """(line number, text) of every non-blank line; ValueError naming the file and line of bytes that are not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"load_prompts: cannot read prompt file {path} ({exc.strerror or exc})") from None
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"load_prompts: {path}:{number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                             f"column {exc.start + 1}); save the file as UTF-8") from None
        if text.strip():
            yield number, text


def load_prompts(path: str | Path, prompt_field: str = "prompt", answer_field: str = "") -> list[dict]:
    """[{"prompt": ..., "answer": ...}] from a JSONL file. Every line must hold the prompt field, and the answer field
    when `answer_field` is given ("" = answers are not read), each as a JSON string (an answer may also be a JSON
    integer, read as its digits): a null, boolean, list, object, or a non-integer number is rejected rather than
    trained on as its text ("None"). A missing field raises MissingFieldError."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"load_prompts: {path} is a directory; give the path of a JSONL prompt file")
    if not path.is_file():
        raise FileNotFoundError(f"load_prompts: prompt file {str(path)!r} does not exist")
    prompts = []
    for number, line in _lines(path):
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
                raise MissingFieldError(f"load_prompts: {path}:{number} has no field {field!r} (fields: "
                                        f"{sorted(record)})", field, key)
            value = record[field]
            if key == "answer" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # an integer answer ({"answer": 42}) reads as its digits
            if not isinstance(value, str):
                allowed = "a string" if key == "prompt" else "a string or an integer"
                raise ValueError(f"load_prompts: {path}:{number}: field {field!r} must be {allowed}; got "
                                 f"{_json_type(value)}; write it as a JSON string (in quotes)")
            item[key] = value
        prompts.append(item)
    if not prompts:
        raise ValueError(f"load_prompts: {path} holds no prompts")
    return prompts


def _json_type(value) -> str:
    """How a JSON value that is not a string reads in a message: `null`, `a number (42)`, `a list ([1, 2])`."""
    if value is None:
        return "null"
    kind = "a boolean" if isinstance(value, bool) else {int: "a number", float: "a number", list: "a list",
                                                        dict: "an object"}.get(type(value), type(value).__name__)
    text = json.dumps(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


class PromptStream:
    """Prompts in a seeded shuffled order, epoch after epoch; `take(n)` advances the position.

    The order of epoch e is a permutation of the prompt indices shuffled by random.Random(seed * 1_000_003 + e): a
    pure function of (seed, number of prompts, e), so a stream resumed at any position (a checkpoint's) continues
    exactly as the original would have. The current epoch's order is computed once and cached, so `take(n)` costs
    O(n) plus one O(N) shuffle per epoch entered.
    """

    def __init__(self, prompts: list[dict], seed: int, position: int = 0) -> None:
        self.prompts, self.seed, self.position = prompts, seed, position
        self._cached: tuple[tuple[int, int, int], list[int]] | None = None  # ((seed, N, epoch), that epoch's order)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _epoch_order(self, epoch: int) -> list[int]:
        """The order of `epoch`, from the cache when it is the epoch last used (keyed by seed and prompt count too,
        so reassigning either is safe; `position` may be set freely, as the trainer does when it resumes)."""
        key = (self.seed, len(self.prompts), epoch)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._order(epoch))
        return self._cached[1]

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.prompts))
            count = min(n - len(out), len(self.prompts) - offset)  # the rest of this epoch, at most
            order = self._epoch_order(epoch)
            out.extend(self.prompts[i] for i in order[offset:offset + count])
            self.position += count
        return out
