"""Reference OPRD-Bridge losses: align student and teacher in a shared r-dimensional subspace (PAPER_NOTES §3).

    z_S = P_S h_S            (P_S: per-layer [r, D_s], trained in Stage 1, frozen in Stage 2)
    z_T = P_T (h_T - mu_T)   (P_T: top-r eigenvectors of the teacher layer's covariance; precomputed, constant)
    loss = (1/L) * sum_l sum_r w_r * row_loss(z_S, z_T)

Row formulas as in rowwise.py with width r: the default "nmse" is (2 - 2cos)/r. The paper's Stage-2 loss is the
squared distance of the normalised vectors without 1/r, i.e. r times ours; scale the coefficient by r to match it.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from oprd_kernels._validation import (
    check_bridge,
    check_float_tensor,
    check_layers,
    check_projector,
    describe,
    fail,
    result_dtype,
)
from oprd_kernels.reference.rowwise import row_loss, weighted_layer_sum

HiddenStates = Union[Tensor, Sequence[Tensor]]


def bridge_loss(student: HiddenStates, teacher_z: HiddenStates, proj: Tensor, *, rows: Tensor | None = None,
                weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean") -> Tensor:
    """Projected alignment loss of OPRD-Bridge.

    Args:
        student: L tensors [B, S, D_s] or one [L, N, D_s]: the student's hidden states at the distilled layers.
        teacher_z: [L, N_sel, r] (or L tensors [N_sel, r]): P_T (h_T - mu_T) for each student layer's paired teacher
            layer, from `project_teacher`; a constant.
        proj: [L, r, D_s] student projectors P_S; receives a gradient when it requires one (Stage 1).
        rows, weights, reduction: as for `alignment_loss`.
        loss_type: "nmse" (default, (2-2cos)/r), "mse" (||z_S - z_T||^2 / r) or "cosine" (1 - cos).

    Returns float32 (float64 for float64 inputs); a scalar, or [L] with reduction="none".
    """
    inp = check_bridge("bridge_loss", student, teacher_z, proj, rows, weights, loss_type, reduction)
    out_dtype = result_dtype(inp.student.dtype, inp.teacher_z.dtype, inp.proj.dtype)
    per_layer = []
    for layer, (s_rows, z_t) in enumerate(zip(inp.student.flat(), inp.teacher_z.flat())):
        s = s_rows if inp.rows is None else s_rows.index_select(0, inp.rows)
        z_s = s.to(out_dtype) @ inp.proj[layer].to(out_dtype).T  # float32 at least, like the row losses
        per_row = row_loss(z_s, z_t.detach(), loss_type)
        per_layer.append(weighted_layer_sum(per_row, inp.weights, out_dtype))
    values = torch.stack(per_layer)
    return values.mean() if reduction == "mean" else values


def project_teacher(teacher_hidden: HiddenStates, proj_t: Tensor, mean_t: Tensor) -> Tensor:
    """z_T = P_T (h_T - mu_T) per layer: the compact Bridge teacher cache.

    Args:
        teacher_hidden: [L, N, D_t] or L tensors [B, S, D_t] / [N, D_t]: teacher rows, one layer per student layer.
        proj_t: [L, r, D_t] teacher projectors (rows = top-r eigenvectors of the centred covariance).
        mean_t: [L, D_t] per-layer teacher means.

    Returns [L, N, r] in float32 (float64 when any input is float64).
    """
    func = "project_teacher"
    h = check_layers(func, "teacher_hidden", teacher_hidden)
    check_projector(func, "proj_t", proj_t, h.num_layers, h.dim, h.device)
    check_float_tensor(func, "mean_t", mean_t)
    if mean_t.shape != (h.num_layers, h.dim):
        raise fail(ValueError, func, "mean_t", f"must have shape [L, D_t] = ({h.num_layers}, {h.dim})",
                   describe(mean_t))
    if mean_t.device != h.device:
        raise fail(ValueError, func, "mean_t", f"must be on the teacher's device {h.device}", f"device {mean_t.device}")
    dtype = result_dtype(h.dtype, proj_t.dtype, mean_t.dtype)
    return torch.stack([(x.to(dtype) - mean_t[i].to(dtype)) @ proj_t[i].to(dtype).T for i, x in enumerate(h.flat())])
