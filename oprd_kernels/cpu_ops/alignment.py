"""The cpu backend of `alignment_loss`: validation, the autograd Function, the calls into oprd_kernels._C.

Semantics are exactly those of oprd_kernels.reference.alignment_loss. By default the gradient is computed in the
forward pass, in the same sweep that reads each selected student row and teacher row once, for an incoming
gradient of 1. The backward then only hands it over. When the incoming gradient is not 1 (a weighted objective,
say), the backward sweeps again with the right scale. Chosen by measurement: docs/kernels.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from oprd_kernels import _build
from oprd_kernels._plans import Plan, alignment_plan
from oprd_kernels._student_grads import (
    DenseGradients,
    as_input_gradients,
    dense_gradients,
    slot_arrays,
    student_layers,
    wanted_layers,
)
from oprd_kernels._tables import layer_table
from oprd_kernels._validation import check_alignment
from oprd_kernels._vjp import backward_only, tensors_of
from oprd_kernels.cpu_ops._args import address, set_gradients, set_slots, set_table, set_threads, set_weights

GRADIENT_IN_FORWARD = True  # False: compute the gradient only in backward (kept for the benchmark's comparison)


def sweep(plan: Plan, layers: tuple[Tensor, ...], grads: DenseGradients | None = None, wanted: Sequence[int] = (),
          layer_scale: Tensor | None = None) -> Tensor:
    """One pass of the C++ kernel: the per-layer losses [L], and the gradients of layers `wanted` into `grads`."""
    ext = _build.load_extension()
    args = ext.AlignmentArgs()
    student = layer_table(layers)
    set_table(args, "s", student)
    set_table(args, "t", plan.cache)
    args.t_layers = len(plan.cache.tensors)
    set_threads(args)
    args.num_layers, args.num_rows, args.num_sel, args.dim = plan.num_layers, plan.num_rows, plan.num_sel, plan.dim
    slots = slot_arrays(plan.rows)
    set_slots(args, slots)
    weights = set_weights(args, plan.weights)
    args.layer_map = address(plan.layer_map)
    args.loss_type, args.fp64 = plan.loss_code, plan.out_dtype == torch.float64
    row_loss = torch.empty(plan.num_layers, plan.num_sel, dtype=plan.out_dtype)
    per_layer = torch.empty(plan.num_layers, dtype=plan.out_dtype)
    args.row_loss, args.per_layer = address(row_loss), address(per_layer)
    index = None
    if grads is not None:
        index = set_gradients(args, grads, wanted, plan.num_layers)
        args.layer_scale = address(layer_scale)
    ext.alignment_run(args)
    del student, slots, weights, index  # the kernel read their memory: they had to live until it returned
    return per_layer


class CpuAlignmentFunction(torch.autograd.Function):
    """The reduced loss (scalar for "mean", [L] for "none"); gradients flow to the student tensors only."""

    @staticmethod
    def forward(ctx, plan: Plan, stacked: bool, *student: Tensor) -> Tensor:
        layers = student_layers(stacked, student)
        wanted = wanted_layers(stacked, ctx.needs_input_grad[2:], plan.num_layers)
        grads = None
        if wanted and plan.gradient_in_forward and plan.num_sel > 0:
            grads = dense_gradients(len(wanted), plan.num_rows, plan.dim, layers[0], plan.rows, stacked=stacked,
                                    kernel_writes_every_row=True)
            scale = torch.full((plan.num_layers,), plan.base_scale(), dtype=plan.out_dtype)
            per_layer = sweep(plan, layers, grads, wanted, scale)
        else:
            per_layer = sweep(plan, layers) if plan.num_sel > 0 else torch.zeros(plan.num_layers,
                                                                                 dtype=plan.out_dtype)
        ctx.plan, ctx.stacked, ctx.grads = plan, stacked, grads
        ctx.save_for_backward(*student)
        return per_layer.mean() if plan.mean else per_layer

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        plan: Plan = ctx.plan
        student = ctx.saved_tensors
        plan.cache.check_unchanged("alignment_loss", "teacher")
        needs = ctx.needs_input_grad[2:]
        wanted = wanted_layers(ctx.stacked, needs, plan.num_layers)
        grads, ctx.grads = ctx.grads, None
        factors = grad_out.expand(plan.num_layers).to(plan.out_dtype)
        if grads is None or not bool((factors == 1).all()):
            layers = student_layers(ctx.stacked, student)
            grads = dense_gradients(len(wanted), plan.num_rows, plan.dim, layers[0], plan.rows, stacked=ctx.stacked,
                                    kernel_writes_every_row=plan.num_sel > 0)
            if plan.num_sel > 0:
                sweep(plan, layers, grads, wanted, (factors * plan.base_scale()).contiguous())
        return (None, None, *as_input_gradients(grads, ctx.stacked, student, needs))


def alignment_loss(student, teacher, *, rows: Tensor | None = None, weights: Tensor | None = None,
                   layer_map: Tensor | None = None, loss_type: str = "mse", reduction: str = "mean") -> Tensor:
    """Fused C++ alignment loss; arguments and result as oprd_kernels.reference.alignment_loss."""
    inp = check_alignment("alignment_loss", student, teacher, rows, weights, layer_map, loss_type, reduction)
    if inp.student.device.type != "cpu":
        raise ValueError(f"alignment_loss: the cpu backend needs CPU tensors; got device {inp.student.device}")
    plan = alignment_plan(inp, loss_type, reduction, GRADIENT_IN_FORWARD and torch.is_grad_enabled())
    stacked = isinstance(student, Tensor)
    return CpuAlignmentFunction.apply(plan, stacked, *((student,) if stacked else tuple(student)))


def alignment_vjp(student, teacher, grad: Tensor, *, rows: Tensor | None = None, weights: Tensor | None = None,
                  layer_map: Tensor | None = None, loss_type: str = "mse", reduction: str = "mean") -> list[Tensor]:
    """The student gradients of `alignment_loss(...)` against `grad`, without autograd (oprd_kernels/_vjp.py): one
    sweep scaled by `grad` (the backward reads nothing the forward sweep computed, so none runs)."""
    inp = check_alignment("alignment_loss", student, teacher, rows, weights, layer_map, loss_type, reduction)
    tensors, stacked = tensors_of(student)
    plan = alignment_plan(inp, loss_type, reduction)
    grads = backward_only(CpuAlignmentFunction, {"plan": plan, "stacked": stacked, "grads": None}, tensors,
                          (False, False, *[True] * len(tensors)), grad)
    return list(grads[2:])
