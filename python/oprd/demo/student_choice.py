"""Choosing the demo's student by accuracy, not by step (issue 13).

The demo's student is an earlier checkpoint of the teacher's own SFT run. A fixed step is fragile: it can land on the
steepest part of the SFT curve, where the same code gives a 0.05 student on one machine and a 0.15 one on another.
So candidates are kept every few SFT steps and the student is the one whose accuracy on a held-out selection set is
nearest `ratio` times the teacher's there (the paper's student/teacher ratio is 32.9 / 50.8 = 0.65).

The search is coarse to fine, because the curve can jump by a third of the teacher's accuracy in 25 steps: every
`stride`-th candidate is evaluated until one reaches the target, then the candidates between it and the previous
coarse one, until one reaches it; of the last below and the first at or above the target, the nearer is taken (a
tie goes to the one at or above). Candidates after the crossing are never evaluated.
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
    reached: bool  # False: no candidate reached the target and the most accurate one evaluated was taken
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
                   teacher_accuracy: float, ratio: float, stride: int = 1) -> tuple[StudentChoice, dict]:
    """(the choice, its weights) from `candidates` in step order, by the coarse-to-fine search of the module's
    docstring; `accuracy_of(state)` is called at most once per candidate."""
    if not 0 < ratio <= 1:
        raise ValueError(f"--student-ratio must be in (0, 1] (a share of the teacher's accuracy); got {ratio!r}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"choose_student: `stride` must be an int >= 1; got {stride!r}")
    if not candidates:
        raise ValueError("choose_student: no candidate checkpoints were kept (more SFT steps than candidate_every?)")
    target = ratio * teacher_accuracy
    seen: dict[int, float] = {}

    def accuracy(i: int) -> float:
        if i not in seen:
            seen[i] = float(accuracy_of(candidates[i][1]))
        return seen[i]

    def first_reaching(indices) -> int | None:
        return next((i for i in indices if accuracy(i) >= target), None)

    coarse = list(range(stride - 1, len(candidates), stride))
    if not coarse or coarse[-1] != len(candidates) - 1:
        coarse.append(len(candidates) - 1)
    hit = first_reaching(coarse)
    if hit is None:
        best = max(seen, key=lambda i: (seen[i], -i))
        return _choice(candidates, seen, best, teacher_accuracy, ratio, reached=False)
    previous = max((i for i in coarse if i < hit), default=-1)
    finer = first_reaching(range(previous + 1, hit))
    hit = hit if finer is None else finer
    below = max((i for i in seen if i < hit), default=None)
    chosen = hit
    if below is not None and target - seen[below] < seen[hit] - target:
        chosen = below
    return _choice(candidates, seen, chosen, teacher_accuracy, ratio, reached=True)


def _choice(candidates, seen: dict[int, float], index: int, teacher_accuracy: float, ratio: float,
            reached: bool) -> tuple[StudentChoice, dict]:
    step, state = candidates[index]
    evaluated = [(candidates[i][0], seen[i]) for i in sorted(seen)]
    return StudentChoice(step, seen[index], teacher_accuracy, ratio, reached, evaluated), state
