"""What a fused kernel call needs besides the student tensors (which go through autograd), built once from the
validated inputs and shared by the triton and cpu backends."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels._tables import LayerTable, layer_table
from oprd_kernels._validation import AlignmentInputs, BridgeInputs, result_dtype

LOSS_CODES = {"mse": 0, "nmse": 1, "cosine": 2}


@dataclass(frozen=True)
class Plan:
    loss_code: int
    cache: LayerTable  # the teacher cache [L_t, N_sel, D] (alignment) or teacher_z [L, N_sel, r] (Bridge)
    rows: Tensor | None
    weights: Tensor | None
    layer_map: Tensor | None  # contiguous; always None for the Bridge
    num_layers: int
    num_rows: int
    num_sel: int
    dim: int
    rank: int  # the Bridge's r; 0 for alignment
    out_dtype: torch.dtype
    mean: bool  # reduction="mean"
    gradient_in_forward: bool = False  # cpu backend: compute the gradient in the forward sweep (see cpu_ops)

    def base_scale(self) -> float:
        """d(result)/d(per-layer value): 1/L for the mean over layers, 1 for per-layer results."""
        return 1.0 / self.num_layers if self.mean else 1.0


def alignment_plan(inp: AlignmentInputs, loss_type: str, reduction: str, gradient_in_forward: bool = False) -> Plan:
    layer_map = None if inp.layer_map is None else inp.layer_map.contiguous()
    return Plan(LOSS_CODES[loss_type], layer_table(inp.teacher.tensors), inp.rows, inp.weights, layer_map,
                inp.student.num_layers, inp.student.num_rows, inp.num_sel, inp.student.dim, 0,
                result_dtype(inp.student.dtype, inp.teacher.dtype), reduction == "mean", gradient_in_forward)


def bridge_plan(inp: BridgeInputs, loss_type: str, reduction: str, gradient_in_forward: bool = False) -> Plan:
    return Plan(LOSS_CODES[loss_type], layer_table(inp.teacher_z.tensors), inp.rows, inp.weights, None,
                inp.student.num_layers, inp.student.num_rows, inp.num_sel, inp.student.dim, inp.proj.shape[1],
                result_dtype(inp.student.dtype, inp.teacher_z.dtype, inp.proj.dtype), reduction == "mean",
                gradient_in_forward)
