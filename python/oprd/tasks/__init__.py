"""Synthetic tasks and their tokenizers, built locally: small, deterministic problems a tiny model can learn, graded
by exact match (`arithmetic`), and the character and byte-level BPE tokenizers for them (`tokenizers`).

Not the demo's alone: `oprd demo` trains on them, and so do the TRL and verl examples and the tests, so they sit at
the bottom of the package, importing nothing of `oprd`.
"""

from oprd.tasks.arithmetic import ANSWER_MARKER, MAX_DIGITS, ArithmeticTask, Example, sft_text, write_jsonl

__all__ = ["ANSWER_MARKER", "MAX_DIGITS", "ArithmeticTask", "Example", "sft_text", "write_jsonl"]
