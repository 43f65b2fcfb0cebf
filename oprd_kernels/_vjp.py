"""Gradients of the fused losses without autograd: what the custom ops' backward (oprd_kernels/custom_ops.py) calls.

A `torch.library` custom op's body runs below autograd, so it cannot record a graph and differentiate it. The fused
backends' autograd Functions already hold explicit backward code; `function_vjp` runs a Function's forward and
backward directly, with `Context` standing in for autograd's ctx (the attributes those Functions use);
`backward_only` skips the forward where the backward reads nothing it computed (the cpu backend). The backends'
`*_vjp` functions build the validated plan and call one of them; the reference's use `torch.func.vjp`, which works
below autograd.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Context:
    """The parts of autograd's ctx that the backends' Functions use."""

    def __init__(self, needs_input_grad: Sequence[bool]) -> None:
        self.needs_input_grad = tuple(needs_input_grad)
        self.saved_tensors: tuple[Tensor, ...] = ()

    def save_for_backward(self, *tensors: Tensor) -> None:
        self.saved_tensors = tensors


def function_vjp(function: type[torch.autograd.Function], leading: tuple, tensors: Sequence[Tensor],
                 needs: Sequence[bool], grad: Tensor) -> tuple:
    """`function.backward(grad)` after `function.forward(*leading, *tensors)`: the gradients of every input, None
    where `needs` (one flag per input, `leading` included) is False."""
    ctx = Context(needs)
    with torch.no_grad():
        function.forward(ctx, *leading, *tensors)
        return function.backward(ctx, grad)


def backward_only(function: type[torch.autograd.Function], state: dict, saved: Sequence[Tensor],
                  needs: Sequence[bool], grad: Tensor) -> tuple:
    """`function.backward(grad)` with its ctx set up directly (`state`: the attributes its forward would set,
    `saved`: what it would save), for a Function whose backward does not read what its forward computed."""
    ctx = Context(needs)
    for name, value in state.items():
        setattr(ctx, name, value)
    ctx.save_for_backward(*saved)
    with torch.no_grad():
        return function.backward(ctx, grad)


def tensors_of(states) -> tuple[tuple[Tensor, ...], bool]:
    """(the student tensors as a Function takes them, stacked)."""
    stacked = isinstance(states, Tensor)
    return ((states,) if stacked else tuple(states)), stacked
