"""The triton backend of `bridge_loss`: validation, the autograd Function, the kernel launches.

Semantics are exactly those of oprd_kernels.reference.bridge_loss; no host sync on CUDA. The projector gradient
(Stage 1) is deterministic: the backward writes dZ [L, N_sel, r] and a GEMM over the slots, split into a few fixed
ranges of slots whose partial sums torch adds in a fixed order, forms dP_l = dZ_l^T @ S_l without atomics.
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
from oprd_kernels._vjp import function_vjp, tensors_of
from oprd_kernels.reference.rowwise import NORM_EPS
from oprd_kernels.triton_ops.alignment import accumulator
from oprd_kernels.triton_ops.bridge_kernels import bridge_bwd_kernel, bridge_fwd_kernel, bridge_proj_grad_kernel
from oprd_kernels.triton_ops.common import cuda_grid, interpreting

BLOCK_R = 16  # rows per program (tl.dot needs >= 16)
MAX_TILE_D = 64
# The projector-gradient GEMM: slots per step and columns per program (CUDA; the interpreter's are small, so that
# small tests cover several tiles), and how many programs to aim for by splitting the slots (per SM on CUDA).
# One stage: software pipelining took 194 (r = 16) to 255 (r = 64) registers for sm_90 against 80 without.
PROJ_GRAD_BLOCKS = {"cuda": dict(BLOCK_K=32, TILE_D=64, num_warps=4, num_stages=1),
                    "cpu": dict(BLOCK_K=16, TILE_D=16)}
PROJ_GRAD_TARGET = {"cuda": 2, "cpu": 8}
MAX_SPLITS = 32


def _flags(plan: Plan, student: LayerTable, proj: Tensor) -> dict:
    native = student.base.dtype in (torch.bfloat16, torch.float16) and proj.dtype == student.base.dtype
    return dict(LOSS=plan.loss_code, HAS_ROWS=plan.rows is not None, HAS_WEIGHTS=plan.weights is not None,
                S_UNIT=student.unit_stride_d, S_ALIGN=student.align, P_UNIT=proj.stride(2) == 1,
                NATIVE_DOT=native and accumulator(plan) == tl.float32,
                ACC=accumulator(plan), BLOCK_R=BLOCK_R, R_PAD=max(16, triton.next_power_of_2(plan.rank)),
                TILE_D=max(16, min(triton.next_power_of_2(plan.dim), MAX_TILE_D)), INTERPRET=interpreting(proj.device),
                num_warps=4)


def row_block_grid(num_layers: int, num_sel: int) -> tuple[int, int]:
    """One program per (block of BLOCK_R entries or slots, layer): row blocks along dimension 0 (up to 2^31 - 1)."""
    return cuda_grid("bridge_loss", triton.cdiv(num_sel, BLOCK_R), num_layers)


def proj_grad_split(num_layers: int, dim: int, num_sel: int, target: int, block_k: int, tile_d: int) -> tuple[int, int]:
    """(splits, slots per split, a multiple of block_k): enough programs to fill `target`, at most MAX_SPLITS
    partial [L, r, D] sums. Fixed by the sizes and the device, so identical calls sum in the same order."""
    blocks = triton.cdiv(num_sel, block_k)
    want = max(1, min(blocks, MAX_SPLITS, triton.cdiv(target, triton.cdiv(dim, tile_d) * num_layers)))
    chunk = triton.cdiv(blocks, want) * block_k
    return triton.cdiv(num_sel, chunk), chunk


def proj_grad_grid(num_layers: int, dim: int, splits: int, tile_d: int) -> tuple[int, int]:
    """One program per (split x column tile, layer)."""
    return cuda_grid("bridge_loss", splits * triton.cdiv(dim, tile_d), num_layers)


def _proj_grad(plan: Plan, table: LayerTable, slot_rows: Tensor | None, dz: Tensor) -> Tensor:
    """dP [L, r, D] = dZ_l^T @ S_l[slot rows] per layer, in dZ's dtype."""
    device = dz.device
    kind = "cuda" if device.type == "cuda" else "cpu"
    opts = dict(PROJ_GRAD_BLOCKS[kind])
    target = PROJ_GRAD_TARGET[kind]
    if kind == "cuda":
        target *= torch.cuda.get_device_properties(device).multi_processor_count
    splits, chunk = proj_grad_split(plan.num_layers, plan.dim, plan.num_sel, target, opts["BLOCK_K"],
                                    opts["TILE_D"])
    out = torch.empty(splits, plan.num_layers, plan.rank, plan.dim, dtype=dz.dtype, device=device)
    bridge_proj_grad_kernel[proj_grad_grid(plan.num_layers, plan.dim, splits, opts["TILE_D"])](
        table.base, table.table, table.seq_len, slot_rows, dz, out, plan.num_sel, plan.rank, plan.dim, chunk,
        HAS_ROWS=plan.rows is not None, S_UNIT=table.unit_stride_d, S_ALIGN=table.align, ACC=accumulator(plan),
        R_PAD=max(16, triton.next_power_of_2(plan.rank)), **opts)
    return out[0] if splits == 1 else out.sum(dim=0)


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
        proj_grad = None
        if plan.num_sel > 0 and (wanted or proj_needs):
            table = layer_table(layers)
            index = [-1] * plan.num_layers
            for slot, layer in enumerate(wanted):
                index[layer] = slot
            grad_index = torch.tensor(index, dtype=torch.int64).to(proj.device, non_blocking=True)
            dz = torch.empty(plan.num_layers, plan.num_sel, plan.rank, dtype=plan.out_dtype, device=proj.device) \
                if proj_needs else None
            slots = slot_arrays(plan.rows)
            z = plan.cache
            bridge_bwd_kernel[row_block_grid(plan.num_layers, plan.num_sel)](
                table.base, table.table, table.seq_len, z.base, z.table, z.seq_len,
                proj, *proj.stride(), slots.order, slots.slot_rows, slots.slot_start,
                plan.weights, grad_per_layer.contiguous(), grad_index, grads.base(layers[0]), grads.offsets, dz,
                plan.num_sel, plan.rank, plan.dim, NORM_EPS * NORM_EPS, PROJ_GRAD=proj_needs, G_ALIGN=grads.align,
                **_flags(plan, table, proj))
            if proj_needs:
                proj_grad = _proj_grad(plan, table, slots.slot_rows, dz)
        elif proj_needs:
            proj_grad = torch.zeros(proj.shape, dtype=plan.out_dtype, device=proj.device)
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


def bridge_vjp(student, teacher_z, proj: Tensor, grad: Tensor, *, rows: Tensor | None = None,
               weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
               proj_grad: bool = False) -> tuple[Tensor | None, list[Tensor]]:
    """(d proj or None, the student gradients) of `bridge_loss(...)` against `grad`, without autograd
    (oprd_kernels/_vjp.py)."""
    inp = check_bridge("bridge_loss", student, teacher_z, proj, rows, weights, loss_type, reduction,
                       check_values=False)  # checked when the loss ran
    tensors, stacked = tensors_of(student)
    plan = bridge_plan(inp, loss_type, reduction)
    per_layer = grad.expand(plan.num_layers) / plan.num_layers if reduction == "mean" else grad
    grads = function_vjp(BridgeFunction, (plan, stacked, inp.proj), tensors,
                         (False, False, proj_grad, *[True] * len(tensors)), per_layer)
    return grads[2], list(grads[3:])
