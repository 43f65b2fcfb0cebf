"""Multi-digit addition written out column by column: the demo's synthetic task for a tiny character-level model.

Format (every field is plain characters over `oprd.tasks.tokenizers.DEFAULT_ALPHABET`):

    prompt    "47+85="
    solution  "7+5+0=12,4+8+1=13;132"
    answer    "132"

The solution has one step per column, least significant first, each exactly "a+b+c=ks": the column's digits a and
b, the carry-in c (0 for the first column, then the previous step's k), and the column sum as two digits k s
(carry-out k, result digit s; "03" not "3"). The fixed width keeps the pattern easy to learn. Steps are joined by
",", then ";" and the sum in ordinary decimal (no leading zeros). The first ";" is the answer marker.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass

from oprd_kernels._validation import as_int

ANSWER_MARKER = ";"
MAX_DIGITS = 6


@dataclass(frozen=True)
class Example:
    """One problem: `prompt` (what the model is given), `solution` (the target response), `answer` (graded part)."""

    prompt: str
    solution: str
    answer: str


def sft_text(example: Example) -> str:
    """The text supervised training predicts: prompt + solution. The trainer adds `<bos>` / `<eos>` around it and
    takes the loss on the solution part only."""
    if not isinstance(example, Example):
        raise TypeError(f"sft_text: `example` must be an Example; got {type(example).__name__}")
    return example.prompt + example.solution


def _check_operand(name: str, value: object) -> int:
    if as_int(value) is None:
        raise TypeError(f"ArithmeticTask.solve: `{name}` must be an int; got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"ArithmeticTask.solve: `{name}` must be >= 0; got {value}")
    return as_int(value)


class ArithmeticTask:
    """Addition of two `digits`-digit numbers (1..6), with the column work shown (module docstring has the format).

    Responses are 10 * digits or 10 * digits + 1 characters long (the answer may gain a carry digit): 21 at most
    for the default digits=2, 41 for digits=4.
    """

    def __init__(self, digits: int = 2):
        if as_int(digits) is None:
            raise TypeError(f"ArithmeticTask: `digits` must be an int; got {type(digits).__name__}")
        if not 1 <= digits <= MAX_DIGITS:
            raise ValueError(f"ArithmeticTask: `digits` must be in 1..{MAX_DIGITS}; got {digits}")
        self.digits = as_int(digits)

    def __repr__(self) -> str:
        return f"ArithmeticTask(digits={self.digits})"

    @property
    def max_solution_chars(self) -> int:
        """The longest solution: digits steps of 8 chars, digits - 1 commas, the marker and a digits + 1 answer."""
        return 10 * self.digits + 1

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        """`n` problems whose operands are each drawn uniformly, with replacement, among the numbers of *exactly*
        `digits` digits (10**(digits-1) .. 10**digits - 1; 0..9 for digits=1), so every solution has `digits` steps.
        Deterministic given the state of `rng`."""
        if as_int(n) is None:
            raise TypeError(f"ArithmeticTask.sample: `n` must be an int; got {type(n).__name__}")
        n = as_int(n)
        if n < 0:
            raise ValueError(f"ArithmeticTask.sample: `n` must be >= 0; got {n}")
        if not isinstance(rng, random.Random):
            raise TypeError(f"ArithmeticTask.sample: `rng` must be a random.Random; got {type(rng).__name__}")
        lo, hi = (0 if self.digits == 1 else 10 ** (self.digits - 1)), 10**self.digits - 1
        return [self.solve(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]

    def solve(self, a: int, b: int) -> Example:
        """The worked example for a + b. Any non-negative ints are accepted; the shorter operand is zero-padded,
        so there is one step per digit of the longer one."""
        a, b = _check_operand("a", a), _check_operand("b", b)
        width = max(len(str(a)), len(str(b)))
        da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]  # least significant digit first
        steps, carry = [], 0
        for x, y in zip(da, db):
            total = int(x) + int(y) + carry
            steps.append(f"{x}+{y}+{carry}={total:02d}")
            carry = total // 10
        answer = str(a + b)
        return Example(prompt=f"{a}+{b}=", solution=",".join(steps) + ANSWER_MARKER + answer, answer=answer)

    @staticmethod
    def extract_answer(response: str) -> str | None:
        """The digits right after the first answer marker ";", stopping at the first non-digit (trailing garbage
        is ignored). None when there is no marker or no digit directly after it (e.g. a truncated response)."""
        if not isinstance(response, str):
            raise TypeError(f"ArithmeticTask.extract_answer: `response` must be a str; got {type(response).__name__}")
        start = response.find(ANSWER_MARKER)
        if start < 0:
            return None
        end = start = start + len(ANSWER_MARKER)
        while end < len(response) and response[end] in "0123456789":
            end += 1
        return response[start:end] or None

    def grade(self, response: str, answer: str) -> bool:
        """True iff the extracted answer equals `answer` exactly (as strings: "0132" does not match "132")."""
        if not isinstance(answer, str):
            raise TypeError(f"ArithmeticTask.grade: `answer` must be a str; got {type(answer).__name__}")
        return self.extract_answer(response) == answer


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example], prompt_field: str = "prompt",
                answer_field: str = "answer") -> int:
    """Write a prompt file for `oprd train`: one JSON object per line holding the prompt under `prompt_field`, the
    answer under `answer_field` and the worked solution under "solution". Returns the number of lines written."""
    func = "write_jsonl"
    for name, field in (("prompt_field", prompt_field), ("answer_field", answer_field)):
        if not isinstance(field, str) or not field:
            raise ValueError(f"{func}: `{name}` must be a non-empty str; got {field!r}")
        if field == "solution":
            raise ValueError(f"{func}: `{name}` must not be 'solution' (that key holds the solution); got {field!r}")
    if prompt_field == answer_field:
        raise ValueError(f"{func}: `prompt_field` and `answer_field` must differ; both are {prompt_field!r}")
    lines = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise TypeError(f"{func}: `examples[{i}]` must be an Example; got {type(ex).__name__}")
        lines.append(json.dumps({prompt_field: ex.prompt, answer_field: ex.answer, "solution": ex.solution}))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return len(lines)
