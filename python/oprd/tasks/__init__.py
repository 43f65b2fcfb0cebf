"""Synthetic tasks for the demo: small, deterministic problems a tiny model can learn, graded by exact match."""

from oprd.tasks.arithmetic import ANSWER_MARKER, MAX_DIGITS, ArithmeticTask, Example, sft_text, write_jsonl

__all__ = ["ANSWER_MARKER", "MAX_DIGITS", "ArithmeticTask", "Example", "sft_text", "write_jsonl"]
