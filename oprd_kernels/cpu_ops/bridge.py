"""The cpu backend of `bridge_loss`: validation, the autograd Function, the calls into oprd_kernels._C.

Semantics are exactly those of oprd_kernels.reference.bridge_loss. As for the alignment loss, the gradients (to the
student rows and, in Stage 1, to P_S) are computed in the forward sweep for an incoming gradient of 1, and the
backward sweeps again only for another incoming gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from oprd_kernels import _build
from oprd_kernels._plans import Plan, bridge_plan
from oprd_kernels._student_grads import (
    DenseGradients,
    as_input_gradients,
    dense_gradients,
    slot_arrays,
    student_layers,
    wanted_layers,
)
from oprd_kernels._tables import layer_table
from oprd_kernels._validation import check_bridge
from oprd_kernels._vjp import backward_only, tensors_of
from oprd_kernels.cpu_ops import alignment as _alignment
from oprd_kernels.cpu_ops._args import (
    DTYPE_CODES,
    address,
    set_gradients,
    set_slots,
    set_table,
    set_threads,
    set_weights,
)


@dataclass
class Gradients:
    """Where a sweep writes gradients: the dense student gradient (layers `wanted`) and/or P_S's, scaled per layer."""

    layer_scale: Tensor
    student: DenseGradients | None = None
    wanted: tuple[int, ...] = ()
    proj: Tensor | None = None


def sweep(plan: Plan, layers: tuple[Tensor, ...], proj: Tensor, grads: Gradients | None = None) -> Tensor:
    """One pass of the C++ kernel: the per-layer losses [L], and the gradients described by `grads`."""
    ext = _build.load_extension()
    args = ext.BridgeArgs()
    student = layer_table(layers)
    set_table(args, "s", student)
    set_table(args, "z", plan.cache)
    args.z_layers = len(plan.cache.tensors)
    set_threads(args)
    args.proj, args.p_dtype = proj.data_ptr(), DTYPE_CODES[proj.dtype]
    args.p_stride_l, args.p_stride_r, args.p_stride_d = proj.stride()
    args.num_layers, args.num_rows, args.num_sel = plan.num_layers, plan.num_rows, plan.num_sel
    args.dim, args.rank = plan.dim, plan.rank
    slots = slot_arrays(plan.rows)
    set_slots(args, slots)
    weights = set_weights(args, plan.weights)
    args.loss_type, args.fp64 = plan.loss_code, plan.out_dtype == torch.float64
    row_loss = torch.empty(plan.num_layers, plan.num_sel, dtype=plan.out_dtype)
    per_layer = torch.empty(plan.num_layers, dtype=plan.out_dtype)
    args.row_loss, args.per_layer = address(row_loss), address(per_layer)
    index = dz = None
    if grads is not None:
        args.layer_scale = address(grads.layer_scale)
        if grads.student is not None:
            index = set_gradients(args, grads.student, grads.wanted, plan.num_layers)
        if grads.proj is not None:
            dz = torch.empty(plan.num_layers, plan.num_sel, plan.rank, dtype=plan.out_dtype)
            args.proj_grad, args.dz = address(grads.proj), address(dz)
    ext.bridge_run(args)
    del student, slots, weights, index, dz  # the kernel read their memory: they had to live until it returned
    return per_layer


class CpuBridgeFunction(torch.autograd.Function):
    """The reduced Bridge loss; gradients flow to the student tensors and to `proj`."""

    @staticmethod
    def _gradients(ctx, plan: Plan, layers, proj: Tensor, factors: Tensor) -> Gradients:
        wanted = wanted_layers(ctx.stacked, ctx.needs_input_grad[3:], plan.num_layers)
        student = dense_gradients(len(wanted), plan.num_rows, plan.dim, layers[0], plan.rows, stacked=ctx.stacked,
                                  kernel_writes_every_row=plan.num_sel > 0) if wanted else None
        proj_grad = torch.zeros(proj.shape, dtype=plan.out_dtype) if ctx.needs_input_grad[2] else None
        return Gradients((factors * plan.base_scale()).to(plan.out_dtype).contiguous(), student, tuple(wanted),
                         proj_grad)

    @staticmethod
    def forward(ctx, plan: Plan, stacked: bool, proj: Tensor, *student: Tensor) -> Tensor:
        ctx.stacked = stacked
        layers = student_layers(stacked, student)
        grads = None
        if any(ctx.needs_input_grad[2:]) and plan.gradient_in_forward and plan.num_sel > 0:
            grads = CpuBridgeFunction._gradients(ctx, plan, layers, proj, torch.ones(plan.num_layers))
        per_layer = sweep(plan, layers, proj, grads) if plan.num_sel > 0 else \
            torch.zeros(plan.num_layers, dtype=plan.out_dtype)
        ctx.plan, ctx.grads = plan, grads
        ctx.save_for_backward(proj, *student)
        return per_layer.mean() if plan.mean else per_layer

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        plan: Plan = ctx.plan
        proj, *student = ctx.saved_tensors
        plan.cache.check_unchanged("bridge_loss", "teacher_z")
        grads, ctx.grads = ctx.grads, None
        factors = grad_out.expand(plan.num_layers).to(plan.out_dtype)
        if grads is None or not bool((factors == 1).all()):
            layers = student_layers(ctx.stacked, student)
            grads = CpuBridgeFunction._gradients(ctx, plan, layers, proj, factors)
            if plan.num_sel > 0:
                sweep(plan, layers, proj, grads)
        proj_grad = grads.proj.to(proj.dtype) if grads.proj is not None else None
        student_grads = as_input_gradients(grads.student, ctx.stacked, student, ctx.needs_input_grad[3:]) \
            if grads.student is not None else [None] * len(student)
        return (None, None, proj_grad, *student_grads)


def bridge_loss(student, teacher_z, proj: Tensor, *, rows: Tensor | None = None, weights: Tensor | None = None,
                loss_type: str = "nmse", reduction: str = "mean") -> Tensor:
    """Fused C++ Bridge loss; arguments and result as oprd_kernels.reference.bridge_loss."""
    inp = check_bridge("bridge_loss", student, teacher_z, proj, rows, weights, loss_type, reduction)
    if inp.student.device.type != "cpu":
        raise ValueError(f"bridge_loss: the cpu backend needs CPU tensors; got device {inp.student.device}")
    plan = bridge_plan(inp, loss_type, reduction, _alignment.GRADIENT_IN_FORWARD and torch.is_grad_enabled())
    stacked = isinstance(student, Tensor)
    return CpuBridgeFunction.apply(plan, stacked, inp.proj, *((student,) if stacked else tuple(student)))


def bridge_vjp(student, teacher_z, proj: Tensor, grad: Tensor, *, rows: Tensor | None = None,
               weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
               proj_grad: bool = False) -> tuple[Tensor | None, list[Tensor]]:
    """(d proj or None, the student gradients) of `bridge_loss(...)` against `grad`, without autograd
    (oprd_kernels/_vjp.py): one sweep scaled by `grad`, no forward sweep."""
    inp = check_bridge("bridge_loss", student, teacher_z, proj, rows, weights, loss_type, reduction)
    tensors, stacked = tensors_of(student)
    plan = bridge_plan(inp, loss_type, reduction)
    grads = backward_only(CpuBridgeFunction, {"plan": plan, "stacked": stacked, "grads": None}, (inp.proj, *tensors),
                          (False, False, proj_grad, *[True] * len(tensors)), grad)
    return grads[2], list(grads[3:])
