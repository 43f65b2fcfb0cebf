"""The triton backend of `alignment_loss`: validation, the autograd Function, the kernel launches.

Semantics are exactly those of oprd_kernels.reference.alignment_loss. No host sync on CUDA: value checks run as
asynchronous device asserts, the incoming gradient is read by the kernel, and repeated rows are grouped on the
device (_tables.row_slots).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from oprd_kernels._plans import Plan, alignment_plan
from oprd_kernels._student_grads import as_input_gradients, dense_gradients, slot_arrays, student_layers, wanted_layers
from oprd_kernels._tables import LayerTable, layer_table
from oprd_kernels._validation import AlignmentInputs, assert_values_async, check_alignment, device_of
from oprd_kernels._vjp import function_vjp, tensors_of
from oprd_kernels.reference.rowwise import NORM_EPS
from oprd_kernels.triton_ops.alignment_kernels import alignment_bwd_kernel, alignment_fwd_kernel
from oprd_kernels.triton_ops.common import cuda_grid, interpreting

MAX_TILE_D = 2048  # D is processed in tiles of at most this many columns (tests shrink it to cover the loop)
TILE_ELEMENTS = 2048  # elements of a program's [BLOCK_R, TILE_D] tile: 8 per thread at 8 warps (16 bytes of bf16)
MAX_BLOCK_R = 64


def launch_options(dim: int) -> dict:
    """TILE_D, BLOCK_R (rows per program), EVEN_D and num_warps for rows of `dim` columns: one tile of about
    TILE_ELEMENTS elements, so that each of 32 * num_warps threads holds 8 consecutive elements (16-byte loads of bf16
    rows; at D <= 128 a row per program read bf16 2 bytes at a time), several rows per program where D is small."""
    tile = min(triton.next_power_of_2(max(dim, 1)), MAX_TILE_D)
    block_r = max(1, min(MAX_BLOCK_R, TILE_ELEMENTS // tile))
    warps = max(1, min(8, block_r * tile // 256))
    return dict(TILE_D=tile, BLOCK_R=block_r, EVEN_D=dim % tile == 0, num_warps=warps)


def accumulator(plan: Plan) -> tl.dtype:
    return tl.float64 if plan.out_dtype == torch.float64 else tl.float32


def fwd_grid(num_layers: int, num_sel: int, block_r: int = 1) -> tuple[int, int]:
    """One program per (block of block_r cache entries, layer): entries along dimension 0, which has room for
    2^31 - 1."""
    return cuda_grid("alignment_loss", triton.cdiv(num_sel, block_r), num_layers)


def bwd_grid(num_wanted: int, num_sel: int, block_r: int = 1) -> tuple[int, int]:
    """One program per (block of block_r row slots, layer wanting a gradient)."""
    return cuda_grid("alignment_loss", triton.cdiv(num_sel, block_r), num_wanted)


def _flags(plan: Plan, student: LayerTable) -> dict:
    return dict(LOSS=plan.loss_code, HAS_ROWS=plan.rows is not None, HAS_WEIGHTS=plan.weights is not None,
                HAS_MAP=plan.layer_map is not None, S_UNIT=student.unit_stride_d, S_ALIGN=student.align,
                T_UNIT=plan.cache.unit_stride_d, T_ALIGN=plan.cache.align, ACC=accumulator(plan),
                **launch_options(plan.dim))


class AlignmentFunction(torch.autograd.Function):
    """Per-layer alignment losses [L]; gradients flow to the student tensors only."""

    @staticmethod
    def forward(ctx, plan: Plan, stacked: bool, *student: Tensor) -> Tensor:
        device = student[0].device
        per_row = torch.empty(plan.num_layers, plan.num_sel, dtype=plan.out_dtype, device=device)
        stats = torch.empty(3, plan.num_layers, plan.num_sel, dtype=plan.out_dtype, device=device)
        if plan.num_sel > 0:
            table = layer_table(student_layers(stacked, student))
            t = plan.cache
            flags = _flags(plan, table)
            alignment_fwd_kernel[fwd_grid(plan.num_layers, plan.num_sel, flags["BLOCK_R"])](
                table.base, table.table, table.seq_len, t.base, t.table, t.seq_len,
                plan.rows, plan.weights, plan.layer_map, per_row, stats,
                plan.num_sel, plan.dim, NORM_EPS * NORM_EPS, **flags)
        ctx.plan, ctx.stacked = plan, stacked
        ctx.save_for_backward(stats, *student)
        return per_row.sum(dim=1)

    @staticmethod
    def backward(ctx, grad_per_layer: Tensor):
        plan: Plan = ctx.plan
        stats, *student = ctx.saved_tensors
        plan.cache.check_unchanged("alignment_loss", "teacher")
        needs = ctx.needs_input_grad[2:]
        layers = student_layers(ctx.stacked, student)
        wanted = wanted_layers(ctx.stacked, needs, plan.num_layers)
        if not wanted:
            return (None, None, *[None] * len(student))
        grads = dense_gradients(len(wanted), plan.num_rows, plan.dim, layers[0], plan.rows, stacked=ctx.stacked)
        if plan.num_sel > 0:
            table = layer_table(layers)
            device = layers[0].device
            grad_layers = torch.tensor(wanted, dtype=torch.int64).to(device, non_blocking=True)
            t, slots = plan.cache, slot_arrays(plan.rows)
            flags = _flags(plan, table)
            alignment_bwd_kernel[bwd_grid(len(wanted), plan.num_sel, flags["BLOCK_R"])](
                table.base, table.table, table.seq_len, t.base, t.table, t.seq_len, slots.order, slots.slot_rows,
                slots.slot_start,
                plan.weights, plan.layer_map, grad_layers, stats, grad_per_layer.contiguous(), grads.base(layers[0]),
                grads.offsets, plan.num_sel, plan.num_layers, plan.dim, G_ALIGN=grads.align,
                INTERPRET=interpreting(device), **flags)
        return (None, None, *as_input_gradients(grads, ctx.stacked, student, needs))


def alignment_loss(student, teacher, *, rows: Tensor | None = None, weights: Tensor | None = None,
                   layer_map: Tensor | None = None, loss_type: str = "mse", reduction: str = "mean") -> Tensor:
    """Fused triton alignment loss; arguments and result as oprd_kernels.reference.alignment_loss."""
    device = device_of(student)
    on_cuda = device is not None and device.type == "cuda"
    inp: AlignmentInputs = check_alignment("alignment_loss", student, teacher, rows, weights, layer_map, loss_type,
                                           reduction, check_values=not on_cuda)
    if on_cuda:
        assert_values_async("alignment_loss", inp.rows, inp.student.num_rows, inp.weights, inp.layer_map,
                            inp.teacher.num_layers)
    plan = alignment_plan(inp, loss_type, reduction)
    stacked = isinstance(student, Tensor)
    tensors = (student,) if stacked else tuple(student)
    per_layer = AlignmentFunction.apply(plan, stacked, *tensors)
    return per_layer.mean() if reduction == "mean" else per_layer


def alignment_vjp(student, teacher, grad: Tensor, *, rows: Tensor | None = None, weights: Tensor | None = None,
                  layer_map: Tensor | None = None, loss_type: str = "mse", reduction: str = "mean") -> list[Tensor]:
    """The student gradients of `alignment_loss(...)` against `grad`, without autograd (oprd_kernels/_vjp.py): the
    forward kernel for its row statistics, then the backward kernel reading `grad` per layer."""
    inp = check_alignment("alignment_loss", student, teacher, rows, weights, layer_map, loss_type, reduction,
                          check_values=False)  # checked when the loss ran
    tensors, stacked = tensors_of(student)
    plan = alignment_plan(inp, loss_type, reduction)
    per_layer = grad.expand(plan.num_layers) / plan.num_layers if reduction == "mean" else grad
    grads = function_vjp(AlignmentFunction, (plan, stacked), tensors, (False, False, *[True] * len(tensors)),
                         per_layer)
    return list(grads[2:])
