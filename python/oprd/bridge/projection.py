"""The student side of OPRD-Bridge Stage 1: a bias-free map P_S [r, D_s] trained with AdamW to take the student's
rows onto the teacher's projected ones, keeping the epoch with the best held-out cosine (the paper's recipe)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels.reference import cosine_similarity


@dataclass(frozen=True)
class TrainedProjection:
    proj: Tensor  # [r, D_s] float32, from the best epoch
    cosine_before: float  # held-out mean cosine at the initialisation
    cosine_per_epoch: list[float]
    best_epoch: int  # 1-based

    @property
    def cosine_after(self) -> float:
        return self.cosine_per_epoch[self.best_epoch - 1]


def best_epoch(cosines: Sequence[float]) -> int:
    """The 1-based epoch with the highest held-out cosine (the earliest on ties; non-finite values never win)."""
    finite = [(c, -i) for i, c in enumerate(cosines) if math.isfinite(c)]
    if not finite:
        raise ValueError(f"fit_bridge: P_S training diverged (held-out cosine {list(cosines)}); lower `lr`")
    return -max(finite)[1] + 1


def heldout_cosine(proj: Tensor, x: Tensor, z: Tensor) -> float:
    """Mean cosine of P_S x and z over the rows (the project's `cosine_similarity`: zero-norm rows count 0)."""
    with torch.no_grad():
        return float(cosine_similarity((x.float() @ proj.T)[None], z[None]))


def train_projection(x: Tensor, z: Tensor, train: Tensor, held: Tensor, init: Tensor, *, epochs: int, lr: float,
                     batch_size: int, generator: torch.Generator) -> TrainedProjection:
    """P_S [r, D_s] minimising mean ||P_S x - z||^2 over the `train` rows with AdamW, keeping the epoch with the best
    mean cosine on the `held` rows. x: [N, D_s] any floating dtype (cast per batch); z: [N, r] float32."""
    w = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr)
    x_held, z_held = x.index_select(0, held), z.index_select(0, held)
    before = heldout_cosine(w.detach(), x_held, z_held)
    history, best_w = [], init.clone()
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train), generator=generator)].split(batch_size):
            loss = (x.index_select(0, batch).float() @ w.T - z.index_select(0, batch)).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(heldout_cosine(w.detach(), x_held, z_held))
        if best_epoch(history) == len(history):
            best_w = w.detach().clone()
    return TrainedProjection(best_w, before, history, best_epoch(history))
