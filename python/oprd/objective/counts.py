"""The distilled positions of a batch and the token counts its means divide by (TokenCounts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd.objective.spec import ObjectiveSpec
from oprd.positions import select_positions
from oprd.rollout import Rollouts


@dataclass(frozen=True)
class TokenCounts:
    """What the token-means of one optimizer step divide by, summed over its micro-batches (verl's global token-mean):
    the rows the OPRD (or Bridge) term selects (with oprd.weighting "sample": the samples that have any) and the
    response tokens the OPD term averages over."""

    oprd: float = 0.0
    opd: float = 0.0

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(self.oprd + other.oprd, self.opd + other.opd)

    def share_of(self, whole: "TokenCounts") -> "TokenCounts":
        """These counts as fractions of `whole`'s (0 where `whole` has none): one micro-batch's weight in a window."""
        return TokenCounts(self.oprd / whole.oprd if whole.oprd > 0 else 0.0,
                           self.opd / whole.opd if whole.opd > 0 else 0.0)


def distilled_positions(spec: ObjectiveSpec, rollouts: Rollouts) -> tuple[Tensor, Tensor]:
    """(rows, weights) of the response positions the OPRD term (and the cosine diagnostic) reads. With a teacher of
    another tokenizer (`rollouts.teacher`), only the positions that have a teacher partner are candidates."""
    k = spec.k if spec.positions in ("last_k", "first_k") else None
    return select_positions(candidate_mask(rollouts), spec.positions, k, weighting=spec.weighting)


def candidate_mask(rollouts: Rollouts) -> Tensor:
    """[B, S] the response positions a state term may distil: all of them, or those paired with a teacher token."""
    if rollouts.teacher is None:
        return rollouts.response_mask
    paired = torch.zeros(rollouts.response_mask.numel(), dtype=rollouts.response_mask.dtype,
                         device=rollouts.response_mask.device)
    paired[rollouts.teacher.student_rows] = 1
    return paired.view_as(rollouts.response_mask)


def teacher_rows(rollouts: Rollouts, rows: Tensor) -> Tensor:
    """The teacher batch's flat positions of the student's `rows`: the same ones for one tokenizer, else each
    row's partner in `rollouts.teacher` (every row given must have one: `distilled_positions` picks only those)."""
    view = rollouts.teacher
    if view is None:
        return rows
    partner = torch.full((rollouts.response_mask.numel(),), -1, dtype=torch.long, device=rows.device)
    partner[view.student_rows] = view.teacher_rows
    return partner[rows]


def _oprd_count(spec: ObjectiveSpec, rows: Tensor, seq_len: int) -> float:
    if spec.weighting == "token":
        return float(rows.numel())
    return float(torch.unique(torch.div(rows, seq_len, rounding_mode="floor")).numel())


def token_counts(spec: ObjectiveSpec, rollouts: Rollouts) -> TokenCounts:
    """This micro-batch's share of the normalisers (see TokenCounts)."""
    oprd = 0.0
    if spec.distils_states:
        rows, _ = distilled_positions(spec, rollouts)
        oprd = _oprd_count(spec, rows, rollouts.input_ids.shape[1])
    opd = float(rollouts.response_mask[:, rollouts.prompt_width:].sum()) if spec.uses_opd else 0.0
    return TokenCounts(oprd, opd)
