"""Gradient injection: the OPRD alignment loss without dense per-layer gradients alive at once.

`oprd_kernels.alignment_loss` returns one dense [B, S, D] gradient per distilled layer. Autograd holds all of them
from the start of the backward pass until backprop reaches each layer: L x B x S x D at once, 2.8 GB at the
paper's shapes in bf16. Here each captured layer output instead gets a tensor hook. When backprop reaches that
layer, the hook computes the layer's loss gradient and adds it to the residual-stream gradient passing through. Only
the deepest layer's gradient leaves through the loss node itself. The loss value and every parameter gradient are
the same, while at most one layer's loss gradient exists at a time.

Limits: one backward per loss (the hooks read the incoming gradient saved by that backward); `reduction` is the
mean over layers. The states must be outputs of one forward, reached by backprop in index order (as
`oprd.capture.capture_student` returns them).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

import oprd_kernels


class _Injector:
    """What the hooks share: the inputs of the loss and the incoming gradient once the backward has started."""

    def __init__(self, states, teacher, rows, weights, layer_map, loss_type, backend) -> None:
        self.states, self.teacher, self.rows = states, teacher, rows
        self.layer_map, self.loss_type, self.backend = layer_map, loss_type, backend
        num_sel = rows.numel() if rows is not None else states[0].numel() // states[0].shape[-1]
        self.weights = weights if weights is not None else torch.full(
            (num_sel,), 1.0 / max(num_sel, 1), dtype=torch.float32, device=states[0].device)
        self.scale: Tensor | None = None

    def teacher_layer(self, i: int) -> Tensor:
        t = i if self.layer_map is None else self.layer_map[i]  # a 0-d tensor indexes without a host sync
        return self.teacher[t].unsqueeze(0) if isinstance(self.teacher, Tensor) else self.teacher[int(t)][None]

    def layer_gradient(self, i: int) -> Tensor:
        """d(loss)/d(states[i]) times the incoming gradient, dense [B, S, D]. The weights carry |incoming| / L and the
        backward of the one-layer loss gets only its sign, so that for the usual positive weight of the loss the
        backends see an incoming gradient of 1 (the cpu backend then needs no second sweep)."""
        leaf = self.states[i].detach().requires_grad_()
        scaled = self.weights * (self.scale.abs() / len(self.states))
        with torch.enable_grad():
            loss = oprd_kernels.alignment_loss([leaf], self.teacher_layer(i), rows=self.rows, weights=scaled,
                                               loss_type=self.loss_type, backend=self.backend)
            (grad,) = torch.autograd.grad(loss, leaf, grad_outputs=self.scale.sign().to(loss.dtype))
        return grad


class _LossNode(torch.autograd.Function):
    """The loss value; its backward records the incoming gradient and returns the deepest layer's gradient."""

    @staticmethod
    def forward(ctx, value: Tensor, injector: _Injector, deepest: Tensor) -> Tensor:
        ctx.injector = injector
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        injector: _Injector = ctx.injector
        injector.scale = grad
        return None, None, injector.layer_gradient(len(injector.states) - 1)


def injected_alignment_loss(states: Sequence[Tensor], teacher, *, rows: Tensor | None = None,
                            weights: Tensor | None = None, layer_map: Tensor | None = None, loss_type: str = "mse",
                            backend: str | None = None) -> Tensor:
    """`oprd_kernels.alignment_loss(states, teacher, ...)` with reduction="mean": same value, same parameter
    gradients, lower peak memory in backward (see the module docstring). `states` in increasing layer order."""
    states = list(states)
    with torch.no_grad():
        value = oprd_kernels.alignment_loss([s.detach() for s in states], teacher, rows=rows, weights=weights,
                                            layer_map=layer_map, loss_type=loss_type, backend=backend)
    if not any(s.requires_grad for s in states):
        return value
    injector = _Injector(states, teacher, rows, weights, layer_map, loss_type, backend)
    for i, state in enumerate(states[:-1]):
        if state.requires_grad:
            state.register_hook(lambda grad, i=i: None if injector.scale is None else grad + injector.layer_gradient(i))
    return _LossNode.apply(value, injector, states[-1])
