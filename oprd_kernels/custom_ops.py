"""`alignment_loss` and `bridge_loss` as `torch.library` custom ops: what `torch.compile(fullgraph=True)` traces
through without a graph break.

Under compilation (`torch.compiler.is_compiling()`) the public functions call `traced_alignment_loss` /
`traced_bridge_loss` instead of dispatching in Python: the registry reads the environment and imports modules,
which Dynamo cannot trace. Each op is opaque to the compiler:
- its eager body is the eager entry point itself (validation, backend choice, the fused kernel), so a compiled call
  means exactly what an eager one does, and a bad input raises the same error when the graph runs;
- its fake body gives the result's shape and dtype from the inputs' metadata alone;
- its backward is a second op that runs the same backend's explicit gradient against the incoming gradient
  (oprd_kernels/_vjp.py: an op body runs below autograd, so nothing is recorded or differentiated there): one
  sweep over the selected rows more than eager (docs/kernels.md), small beside the model's own passes, and no
  gradient buffers held from forward to backward.

Hidden states travel as `Tensor[]` with a flag for the stacked form ([L, N, D] is one tensor); gradients come back in
the inputs' shapes, contiguous.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._validation import result_dtype
from oprd_kernels.dispatch import resolve_vjp
from oprd_kernels.eager import HiddenStates, eager_alignment_loss, eager_bridge_loss


def _listed(states: HiddenStates) -> tuple[list[Tensor], bool]:
    """(the tensors, stacked): one [L, N, D] tensor or a sequence of per-layer tensors."""
    return ([states], True) if isinstance(states, Tensor) else (list(states), False)


def _unlisted(tensors: list[Tensor], stacked: bool) -> HiddenStates:
    return tensors[0] if stacked else tensors


def _result(student: list[Tensor], stacked: bool, reduction: str, *others: Tensor) -> Tensor:
    """A fake result: a scalar for "mean", [L] otherwise, in the losses' dtype."""
    num_layers = student[0].shape[0] if stacked else len(student)
    shape = () if reduction == "mean" else (num_layers,)
    return student[0].new_empty(shape, dtype=result_dtype(student[0].dtype, *(t.dtype for t in others)))


def _save(ctx, student: list[Tensor], teacher: list[Tensor], *rest, options: list) -> None:
    """Saves both tensor lists and the optional tensors after them; `options` are the op's non-tensor arguments."""
    ctx.counts, ctx.options = (len(student), len(teacher)), options
    ctx.save_for_backward(*student, *teacher, *rest)


def _saved(ctx) -> tuple[list[Tensor], list[Tensor], tuple]:
    """(student, teacher, the tensors saved after them) as `_save` stored them."""
    n_s, n_t = ctx.counts
    saved = ctx.saved_tensors
    return list(saved[:n_s]), list(saved[n_s:n_s + n_t]), saved[n_s + n_t:]


def _fake_gradients(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]


# ------------------------------------------------------------------------------------------------ alignment_loss


@torch.library.custom_op("oprd::alignment_loss", mutates_args=())
def alignment_op(student: list[Tensor], teacher: list[Tensor], rows: Tensor | None, weights: Tensor | None,
                 layer_map: Tensor | None, loss_type: str, reduction: str, backend: str | None, stacked: bool,
                 teacher_stacked: bool) -> Tensor:
    with torch.no_grad():
        return eager_alignment_loss(_unlisted(student, stacked), _unlisted(teacher, teacher_stacked), rows=rows,
                                    weights=weights, layer_map=layer_map, loss_type=loss_type, reduction=reduction,
                                    backend=backend)


@alignment_op.register_fake
def _(student, teacher, rows, weights, layer_map, loss_type, reduction, backend, stacked, teacher_stacked):
    return _result(student, stacked, reduction, teacher[0])


@torch.library.custom_op("oprd::alignment_loss_backward", mutates_args=())
def alignment_backward_op(grad: Tensor, student: list[Tensor], teacher: list[Tensor], rows: Tensor | None,
                          weights: Tensor | None, layer_map: Tensor | None, loss_type: str, reduction: str,
                          backend: str | None, stacked: bool, teacher_stacked: bool) -> list[Tensor]:
    vjp = resolve_vjp("alignment_loss", backend, student[0].device)
    grads = vjp(_unlisted(student, stacked), _unlisted(teacher, teacher_stacked), grad, rows=rows, weights=weights,
                layer_map=layer_map, loss_type=loss_type, reduction=reduction)
    return [g.contiguous() for g in grads]


@alignment_backward_op.register_fake
def _(grad, student, *rest):
    return _fake_gradients(student)


def _alignment_setup(ctx, inputs, output) -> None:
    student, teacher, rows, weights, layer_map, *options = inputs
    _save(ctx, student, teacher, rows, weights, layer_map, options=options)


def _alignment_backward(ctx, grad):
    student, teacher, rest = _saved(ctx)
    grads = alignment_backward_op(grad, student, teacher, *rest, *ctx.options)
    return (grads, [None] * len(teacher), *[None] * 8)  # the structure of the inputs: a list for each list


alignment_op.register_autograd(_alignment_backward, setup_context=_alignment_setup)


def traced_alignment_loss(student: HiddenStates, teacher: HiddenStates, *, rows: Tensor | None = None,
                          weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                          reduction: str = "mean", backend: str | None = None) -> Tensor:
    """`alignment_loss` through the custom op (what a compiled graph calls)."""
    s, stacked = _listed(student)
    t, t_stacked = _listed(teacher)
    return alignment_op(s, t, rows, weights, layer_map, loss_type, reduction, backend, stacked, t_stacked)


# ------------------------------------------------------------------------------------------------ bridge_loss


@torch.library.custom_op("oprd::bridge_loss", mutates_args=())
def bridge_op(student: list[Tensor], teacher_z: list[Tensor], proj: Tensor, rows: Tensor | None,
              weights: Tensor | None, loss_type: str, reduction: str, backend: str | None, stacked: bool,
              teacher_stacked: bool) -> Tensor:
    with torch.no_grad():
        return eager_bridge_loss(_unlisted(student, stacked), _unlisted(teacher_z, teacher_stacked), proj, rows=rows,
                                 weights=weights, loss_type=loss_type, reduction=reduction, backend=backend)


@bridge_op.register_fake
def _(student, teacher_z, proj, rows, weights, loss_type, reduction, backend, stacked, teacher_stacked):
    return _result(student, stacked, reduction, teacher_z[0], proj)


@torch.library.custom_op("oprd::bridge_loss_backward", mutates_args=())
def bridge_backward_op(grad: Tensor, student: list[Tensor], teacher_z: list[Tensor], proj: Tensor,
                       rows: Tensor | None, weights: Tensor | None, loss_type: str, reduction: str,
                       backend: str | None, stacked: bool, teacher_stacked: bool, proj_grad: bool) -> list[Tensor]:
    """[d proj (empty unless `proj_grad`), d student...]."""
    vjp = resolve_vjp("bridge_loss", backend, student[0].device)
    d_proj, grads = vjp(_unlisted(student, stacked), _unlisted(teacher_z, teacher_stacked), proj, grad, rows=rows,
                        weights=weights, loss_type=loss_type, reduction=reduction, proj_grad=proj_grad)
    return [d_proj.contiguous() if proj_grad else proj.new_empty(0), *(g.contiguous() for g in grads)]


@bridge_backward_op.register_fake
def _(grad, student, teacher_z, proj, rows, weights, loss_type, reduction, backend, stacked, teacher_stacked,
      proj_grad):
    return [_fake_gradients([proj])[0] if proj_grad else proj.new_empty(0), *_fake_gradients(student)]


def _bridge_setup(ctx, inputs, output) -> None:
    student, teacher_z, proj, rows, weights, *options = inputs
    _save(ctx, student, teacher_z, proj, rows, weights, options=options)


def _bridge_backward(ctx, grad):
    student, teacher_z, (proj, rows, weights) = _saved(ctx)
    wants_proj = bool(ctx.needs_input_grad[2])
    d_proj, *d_student = bridge_backward_op(grad, student, teacher_z, proj, rows, weights, *ctx.options, wants_proj)
    return (d_student, [None] * len(teacher_z), d_proj if wants_proj else None, *[None] * 7)


bridge_op.register_autograd(_bridge_backward, setup_context=_bridge_setup)


def traced_bridge_loss(student: HiddenStates, teacher_z: HiddenStates, proj: Tensor, *, rows: Tensor | None = None,
                       weights: Tensor | None = None, loss_type: str = "nmse", reduction: str = "mean",
                       backend: str | None = None) -> Tensor:
    """`bridge_loss` through the custom op (what a compiled graph calls)."""
    s, stacked = _listed(student)
    t, t_stacked = _listed(teacher_z)
    return bridge_op(s, t, proj, rows, weights, loss_type, reduction, backend, stacked, t_stacked)
