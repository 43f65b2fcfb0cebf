"""Reference OPRD alignment loss and the `rep/cosine_similarity` diagnostic (plain PyTorch, the specification).

    loss = (1/L) * sum_l sum_r w_r * row_loss(student_l[rows[r]], teacher[layer_map[l]][r])

with w_r = 1/N_sel unless `weights` is given. See oprd_kernels/reference/rowwise.py for the row formulas.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Union

import torch
from torch import Tensor

from oprd_kernels._validation import AlignmentInputs, check_alignment, result_dtype
from oprd_kernels.reference.rowwise import row_cosine, row_loss, weighted_layer_sum

HiddenStates = Union[Tensor, Sequence[Tensor]]


def layer_pairs(inp: AlignmentInputs) -> Iterator[tuple[Tensor, Tensor]]:
    """(selected student rows [N_sel, D], teacher cache rows [N_sel, D]) for each student layer, in order."""
    teacher_index = range(inp.student.num_layers) if inp.layer_map is None else inp.layer_map.tolist()
    teacher_rows = inp.teacher.flat()
    for s_rows, t_layer in zip(inp.student.flat(), teacher_index):
        selected = s_rows if inp.rows is None else s_rows.index_select(0, inp.rows)
        yield selected, teacher_rows[t_layer].detach()


def alignment_loss(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                   weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                   reduction: str = "mean") -> Tensor:
    """Multi-layer hidden-state alignment loss (PAPER_NOTES Eq. 6 for loss_type="mse").

    Args:
        student: L tensors [B, S, D] (HF `hidden_states` at the distilled layers) or one [L, N, D] tensor.
        teacher: the teacher cache [L_t, N_sel, D] or L_t tensors [N_sel, D]; treated as a constant (no gradient).
        rows: int64 [N_sel] indices into the flattened B*S student rows, in cache order; None = all rows.
        weights: [N_sel] non-negative per-row weights; None = 1/N_sel (token-mean).
        layer_map: int64 [L], the teacher cache layer of each student layer; None = identity (needs L_t == L).
        loss_type: "mse" (||s-t||^2/D), "nmse" ((2-2cos)/D on L2-normalised rows) or "cosine" (1-cos).
        reduction: "mean" -> scalar mean over layers; "none" -> [L] per-layer values.

    Returns float32 (float64 for float64 inputs). An empty row set gives 0 and a zero gradient.
    """
    inp = check_alignment("alignment_loss", student, teacher, rows, weights, layer_map, loss_type, reduction)
    out_dtype = result_dtype(inp.student.dtype, inp.teacher.dtype)
    per_layer = [weighted_layer_sum(row_loss(s, t, loss_type), inp.weights, out_dtype) for s, t in layer_pairs(inp)]
    values = torch.stack(per_layer)
    return values.mean() if reduction == "mean" else values


@torch.no_grad()
def cosine_similarity(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                      weights: Tensor | None = None, layer_map: Tensor | None = None,
                      reduction: str = "mean") -> Tensor:
    """`rep/cosine_similarity`: weighted mean cosine per layer, averaged over layers (no gradient).

    Arguments mean what they mean for `alignment_loss`. Per layer the value is sum_r w_r cos_r / sum_r w_r, so any
    non-negative weights give a weighted mean; rows with zero total weight (or no rows) give 0. Zero-norm rows have
    cosine 0. Returns float32 (float64 for float64 inputs): a scalar, or [L] with reduction="none".
    """
    inp = check_alignment("cosine_similarity", student, teacher, rows, weights, layer_map, None, reduction)
    out_dtype = result_dtype(inp.student.dtype, inp.teacher.dtype)
    w = (torch.ones(inp.num_sel, device=inp.student.device, dtype=out_dtype) if inp.weights is None
         else inp.weights.to(out_dtype))
    total = w.sum()
    per_layer = []
    for s, t in layer_pairs(inp):
        cos = row_cosine(s, t).to(out_dtype)
        per_layer.append(torch.where(total > 0, (w * cos).sum() / total.clamp_min(torch.finfo(out_dtype).tiny),
                                     torch.zeros((), dtype=out_dtype, device=w.device)))
    values = torch.stack(per_layer)
    return values.mean() if reduction == "mean" else values
