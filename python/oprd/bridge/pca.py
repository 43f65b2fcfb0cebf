"""The teacher side of OPRD-Bridge Stage 1: one teacher layer's PCA (mean, eigenvalues, components), streamed over
its rows in float64 with one `eigh` of the D_t x D_t covariance, from which every rank is sliced (P_T, mu_T)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

PCA_CHUNK_ROWS = 4096  # rows converted to float64 at a time while accumulating the scatter


@dataclass(frozen=True)
class TeacherPCA:
    """A teacher layer's PCA: mean [D] and eigenvalues [D] (descending) and components [k, D] (rows, unit norm,
    largest-magnitude entry positive) of the covariance of `rows` rows, all float64."""

    mean: Tensor
    eigenvalues: Tensor
    components: Tensor
    rows: int

    def explained_variance(self, rank: int) -> float:
        """Share of the total variance in the top-`rank` components (negative round-off eigenvalues count as 0)."""
        values = self.eigenvalues.clamp_min(0)
        total = float(values.sum())
        return float(values[:rank].sum()) / total if total > 0 else 0.0

    def top(self, rank: int) -> "TeacherPCA":
        return TeacherPCA(self.mean, self.eigenvalues, self.components[:rank].clone(), self.rows)


def teacher_pca(chunks: Iterable[Tensor]) -> TeacherPCA:
    """PCA of the rows of `chunks` ([n_i, D] each), streamed: per chunk a float64 mean and centred scatter, merged
    exactly (Chan et al.'s pairwise update, which avoids the cancellation of raw sums of squares), then one `eigh`
    of the D x D covariance (divided by rows - 1)."""
    n, mean, scatter = 0, None, None
    for chunk in chunks:
        for piece in chunk.split(PCA_CHUNK_ROWS):
            x = piece.to(torch.float64)
            m, piece_mean = x.shape[0], x.mean(0)
            centred = x - piece_mean
            if n == 0:
                n, mean, scatter = m, piece_mean, centred.T @ centred
                continue
            delta = piece_mean - mean
            scatter += centred.T @ centred + torch.outer(delta, delta) * (n * m / (n + m))
            mean += delta * (m / (n + m))
            n += m
    if n < 2:
        raise ValueError(f"teacher_pca: a covariance needs at least 2 rows; got {n}")
    values, vectors = torch.linalg.eigh(scatter / (n - 1))
    return TeacherPCA(mean, values.flip(0), _fix_signs(vectors.flip(1).T), n)


def _fix_signs(rows: Tensor) -> Tensor:
    """Each row times the sign of its largest-magnitude entry (the first such), so equal inputs give equal files."""
    peak = rows.abs().argmax(dim=1, keepdim=True)
    return rows * rows.gather(1, peak).sign()
