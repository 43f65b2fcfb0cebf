"""The triton backend of `bridge_loss`: validation, the autograd Function, the kernel launches.

Semantics are exactly those of oprd_kernels.reference.bridge_loss; no host sync on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from oprd_kernels._plans import Plan, bridge_plan
from oprd_kernels._student_grads import as_input_gradients, dense_gradients, slot_arrays, student_layers, wanted_layers
from oprd_kernels._tables import LayerTable, layer_table
from oprd_kernels._validation import assert_values_async, check_bridge, device_of
from oprd_kernels.reference.rowwise import NORM_EPS
from oprd_kernels.triton_ops.alignment import accumulator
from oprd_kernels.triton_ops.bridge_kernels import bridge_bwd_kernel, bridge_fwd_kernel
from oprd_kernels.triton_ops.common import cuda_grid

BLOCK_R = 16  # rows per program (tl.dot needs >= 16)
MAX_TILE_D = 64


def _flags(plan: Plan, student: LayerTable, proj: Tensor) -> dict:
    native = student.base.dtype in (torch.bfloat16, torch.float16) and proj.dtype == student.base.dtype \
        and proj.device.type == "cuda"
    return dict(LOSS=plan.loss_code, HAS_ROWS=plan.rows is not None, HAS_WEIGHTS=plan.weights is not None,
                S_UNIT=student.unit_stride_d, S_ALIGN=student.align, P_UNIT=proj.stride(2) == 1,
                NATIVE_DOT=native and accumulator(plan) == tl.float32,
                ACC=accumulator(plan), BLOCK_R=BLOCK_R, R_PAD=max(16, triton.next_power_of_2(plan.rank)),
                TILE_D=max(16, min(triton.next_power_of_2(plan.dim), MAX_TILE_D)), num_warps=4)


def row_block_grid(num_layers: int, num_sel: int) -> tuple[int, int]:
    """One program per (block of BLOCK_R entries or slots, layer): row blocks along dimension 0 (up to 2^31 - 1)."""
    return cuda_grid("bridge_loss", triton.cdiv(num_sel, BLOCK_R), num_layers)


class BridgeFunction(torch.autograd.Function):
    """Per-layer Bridge losses [L]; gradients flow to the student tensors and to `proj`."""

    @staticmethod
    def forward(ctx, plan: Plan, stacked: bool, proj: Tensor, *student: Tensor) -> Tensor:
        per_row = torch.empty(plan.num_layers, plan.num_sel, dtype=plan.out_dtype, device=proj.device)
        if plan.num_sel > 0:
            table = layer_table(student_layers(stacked, student))
            z = plan.cache
            bridge_fwd_kernel[row_block_grid(plan.num_layers, plan.num_sel)](
                table.base, table.table, table.seq_len, z.base, z.table, z.seq_len,
                proj, *proj.stride(), plan.rows, plan.weights, per_row,
                plan.num_sel, plan.rank, plan.dim, NORM_EPS * NORM_EPS, **_flags(plan, table, proj))
        ctx.plan, ctx.stacked = plan, stacked
        ctx.save_for_backward(proj, *student)
        return per_row.sum(dim=1)

    @staticmethod
    def backward(ctx, grad_per_layer: Tensor):
        plan: Plan = ctx.plan
        proj, *student = ctx.saved_tensors
        plan.cache.check_unchanged("bridge_loss", "teacher_z")
        proj_needs, needs = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        layers = student_layers(ctx.stacked, student)
        wanted = wanted_layers(ctx.stacked, needs, plan.num_layers)
        grads = dense_gradients(len(wanted), plan.num_rows, plan.dim, layers[0], plan.rows, stacked=ctx.stacked)
        acc_dtype = plan.out_dtype
        proj_grad = torch.zeros(proj.shape, dtype=acc_dtype, device=proj.device) if proj_needs else None
        if plan.num_sel > 0 and (wanted or proj_needs):
            table = layer_table(layers)
            index = [-1] * plan.num_layers
            for slot, layer in enumerate(wanted):
                index[layer] = slot
            grad_index = torch.tensor(index, dtype=torch.int64).to(proj.device, non_blocking=True)
            z = plan.cache
            bridge_bwd_kernel[row_block_grid(plan.num_layers, plan.num_sel)](
                table.base, table.table, table.seq_len, z.base, z.table, z.seq_len,
                proj, *proj.stride(), *slot_arrays(plan.rows),
                plan.weights, grad_per_layer.contiguous(), grad_index, grads.base(layers[0]), grads.offsets, proj_grad,
                plan.num_sel, plan.rank, plan.dim, NORM_EPS * NORM_EPS, PROJ_GRAD=proj_needs, G_ALIGN=grads.align,
                BF16_RNE=layers[0].dtype == torch.bfloat16 and proj.device.type == "cpu", **_flags(plan, table, proj))
        proj_out = proj_grad.to(proj.dtype) if proj_needs else None
        return (None, None, proj_out, *as_input_gradients(grads, ctx.stacked, student, needs))


def bridge_loss(student, teacher_z, proj: Tensor, *, rows: Tensor | None = None, weights: Tensor | None = None,
                loss_type: str = "nmse", reduction: str = "mean") -> Tensor:
    """Fused triton Bridge loss; arguments and result as oprd_kernels.reference.bridge_loss."""
    device = device_of(student)
    on_cuda = device is not None and device.type == "cuda"
    inp = check_bridge("bridge_loss", student, teacher_z, proj, rows, weights, loss_type, reduction,
                       check_values=not on_cuda)
    if on_cuda:
        assert_values_async("bridge_loss", inp.rows, inp.student.num_rows, inp.weights, None, 0)
    plan = bridge_plan(inp, loss_type, reduction)
    stacked = isinstance(student, Tensor)
    per_layer = BridgeFunction.apply(plan, stacked, inp.proj, *((student,) if stacked else tuple(student)))
    return per_layer.mean() if reduction == "mean" else per_layer
