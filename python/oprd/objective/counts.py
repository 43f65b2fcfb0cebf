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
    """(rows, weights) of the response positions the OPRD term (and the cosine diagnostic) reads."""
    k = spec.k if spec.positions in ("last_k", "first_k") else None
    return select_positions(rollouts.response_mask, spec.positions, k, weighting=spec.weighting)


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
