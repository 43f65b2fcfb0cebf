"""Choosing the demo's student by accuracy, not by step (issue 13).

The demo's student is an earlier checkpoint of the teacher's own SFT run. A fixed step is fragile: it can land on the
steepest part of the SFT curve, where the same code gives a 0.05 student on one machine and a 0.15 one on another.
So candidates are kept every few SFT steps, and the student is the first whose accuracy on a held-out selection
set reaches `ratio` times the teacher's there (the paper's student/teacher ratio is 32.9 / 50.8 = 0.65).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class StudentChoice:
    step: int  # the SFT step of the chosen weights
    accuracy: float  # its accuracy on the selection set
    teacher_accuracy: float  # the teacher's on the same set
    ratio: float  # the target share of the teacher's accuracy
    reached: bool  # False: no candidate reached the target; the most accurate one evaluated was taken
    candidates: list[tuple[int, float]] = field(default_factory=list)  # (step, accuracy) of every one evaluated


class CandidateKeeper:
    """An SFT `on_step` callback that keeps a CPU copy of the weights every `every` steps (small demo models)."""

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"CandidateKeeper: `every` must be an int >= 1; got {every!r}")
        self.every = every
        self.states: list[tuple[int, dict[str, torch.Tensor]]] = []

    def __call__(self, step: int, model: nn.Module, loss: float) -> None:
        if step % self.every == 0:
            self.states.append((step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}))


def choose_student(candidates: list[tuple[int, dict]], accuracy_of: Callable[[dict], float],
                   teacher_accuracy: float, ratio: float) -> tuple[StudentChoice, dict]:
    """(the choice, its weights): the first candidate, in step order, whose `accuracy_of(state)` reaches
    `ratio * teacher_accuracy`; candidates after it are not evaluated."""
    if not 0 < ratio <= 1:
        raise ValueError(f"--student-ratio must be in (0, 1] (a share of the teacher's accuracy); got {ratio!r}")
    if not candidates:
        raise ValueError("choose_student: no candidate checkpoints were kept (more SFT steps than candidate_every?)")
    target = ratio * teacher_accuracy
    seen: list[tuple[int, float]] = []
    best = None
    for step, state in candidates:
        accuracy = accuracy_of(state)
        seen.append((step, accuracy))
        if best is None or accuracy > best[1]:
            best = (step, accuracy, state)
        if accuracy >= target:
            return StudentChoice(step, accuracy, teacher_accuracy, ratio, True, seen), state
    step, accuracy, state = best
    return StudentChoice(step, accuracy, teacher_accuracy, ratio, False, seen), state
