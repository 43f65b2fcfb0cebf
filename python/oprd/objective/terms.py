"""What a loss term is (the `Term` protocol) and what it returns (TermOutput).

A term reads a `Batch` and returns its token-mean loss over the batch, scaled by this micro-batch's share of the
optimizer step's count (`scale`, see TokenCounts), and, on logging steps only (`with_metrics`), its diagnostics as
floats. `needs` says what the model passes must produce for it. Which terms a method combines, with which
coefficients, is the table in oprd.objective.methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from oprd.objective.passes import Needs


@dataclass
class TermOutput:
    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # empty unless asked for (logging steps)


class Term(Protocol):
    name: str  # its loss is logged as loss/<name>
    share: str  # the TokenCounts field its token-mean divides by ("oprd" or "opd")

    def needs(self, spec) -> Needs: ...

    def evaluate(self, batch, scale: float, with_metrics: bool) -> TermOutput: ...
