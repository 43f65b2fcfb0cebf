"""`alignment_loss` and `bridge_loss` under `torch.compile(fullgraph=True)`: no graph break (the custom ops of
oprd_kernels/custom_ops.py), values and gradients equal to eager ones on fresh random inputs of odd sizes, and the
ops' registrations (schema, fake, autograd) checked by `torch.library.opcheck`."""

from __future__ import annotations

import pytest
import torch

import oprd_kernels
from oprd_kernels.custom_ops import alignment_op, bridge_op

BACKENDS = ["reference", "cpu", "triton"]  # triton: under TRITON_INTERPRET=1 (tests/conftest.py)


def alignment_inputs(seed: int, stacked: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    num_layers, batch, seq, dim, num_sel = 3, 2, 5, 7, 6
    if stacked:
        student = torch.randn(num_layers, batch * seq, dim, generator=g, dtype=dtype).requires_grad_()
    else:
        student = [torch.randn(batch, seq, dim, generator=g, dtype=dtype).requires_grad_() for _ in range(num_layers)]
    teacher = torch.randn(2, num_sel, dim, generator=g, dtype=dtype)
    rows = torch.randperm(batch * seq, generator=g)[:num_sel].sort().values
    weights = torch.rand(num_sel, generator=g, dtype=dtype)
    layer_map = torch.tensor([0, 1, 1])
    return student, teacher, rows, weights, layer_map


def leaves(student):
    return [student] if isinstance(student, torch.Tensor) else list(student)


def eager_and_compiled(fn, student, *args):
    """(value, gradients) of `fn` eagerly and compiled with fullgraph=True (a graph break raises)."""
    results = []
    for run in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        for x in leaves(student):
            x.grad = None
        value = run(student, *args)
        value.sum().backward()
        results.append((value.detach(), [x.grad.clone() for x in leaves(student)]))
    return results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stacked", [False, True], ids=["layer list", "stacked"])
@pytest.mark.parametrize("loss_type, reduction", [("mse", "mean"), ("nmse", "none"), ("cosine", "mean")])
def test_compiled_alignment_loss_equals_eager(backend, stacked, loss_type, reduction):
    torch._dynamo.reset()
    student, teacher, rows, weights, layer_map = alignment_inputs(1, stacked)

    def loss(s, t, r, w, m):
        return 3.0 * oprd_kernels.alignment_loss(s, t, rows=r, weights=w, layer_map=m, loss_type=loss_type,
                                                 reduction=reduction, backend=backend)

    (value, grads), (c_value, c_grads) = eager_and_compiled(loss, student, teacher, rows, weights, layer_map)
    torch.testing.assert_close(c_value, value, rtol=1e-6, atol=1e-7)
    for got, want in zip(c_grads, grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("proj_grad", [False, True], ids=["frozen P_S", "P_S trained"])
def test_compiled_bridge_loss_equals_eager_with_and_without_the_projector_gradient(backend, proj_grad):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(2, 5, 9, generator=g).requires_grad_() for _ in range(2)]
    teacher_z = torch.randn(2, 7, 3, generator=g)
    proj = torch.randn(2, 3, 9, generator=g).requires_grad_(proj_grad)
    rows = torch.tensor([0, 2, 3, 5, 8, 9, 9])  # a repeated row

    def loss(s, z, p, r):
        return oprd_kernels.bridge_loss(s, z, p, rows=r, reduction="none", backend=backend) * torch.tensor([1., 2.])

    results = []
    for run in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        for x in (*student, proj):
            x.grad = None
        value = run(student, teacher_z, proj, rows)
        value.sum().backward()
        results.append((value.detach(), [x.grad for x in student], proj.grad))
    (value, grads, d_proj), (c_value, c_grads, c_proj) = results
    torch.testing.assert_close(c_value, value, rtol=1e-6, atol=1e-7)
    for got, want in zip(c_grads, grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    if proj_grad:
        torch.testing.assert_close(c_proj, d_proj, rtol=1e-6, atol=1e-7)
    else:
        assert c_proj is None and d_proj is None


def test_inductor_compiles_a_step_through_the_loss_with_no_graph_break():
    """The default backend (inductor generating C++ for the surrounding ops) with a real layer in front."""
    torch._dynamo.reset()
    torch.manual_seed(3)
    layer = torch.nn.Linear(7, 7)
    x = torch.randn(2, 5, 7)
    teacher = torch.randn(1, 4, 7)
    rows = torch.tensor([1, 4, 6, 9])

    def step(inp):
        h = torch.tanh(layer(inp))
        return oprd_kernels.alignment_loss([h], teacher, rows=rows)

    eager = step(x)
    eager.backward()
    want = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    compiled = torch.compile(step, fullgraph=True)(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for p, w in zip(layer.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)


def test_a_bad_argument_is_the_eager_error_when_the_compiled_graph_runs():
    torch._dynamo.reset()
    student, teacher, rows, weights, layer_map = alignment_inputs(4, stacked=False)

    def loss(s, t, r):
        return oprd_kernels.alignment_loss(s, t, rows=r, layer_map=torch.tensor([0, 1, 2]))  # teacher: 2 layers

    with pytest.raises(ValueError, match="alignment_loss: `layer_map`"):
        torch.compile(loss, fullgraph=True, backend="aot_eager")(student, teacher, rows)


def test_the_ops_registrations_pass_opcheck():
    student, teacher, rows, weights, layer_map = alignment_inputs(5, stacked=False, dtype=torch.float64)
    torch.library.opcheck(alignment_op, (student, [teacher], rows, weights, layer_map, "mse", "mean", "cpu", False,
                                         True))
    g = torch.Generator().manual_seed(6)
    s = torch.randn(2, 6, 5, generator=g, dtype=torch.float64).requires_grad_()
    z = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    proj = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).requires_grad_()
    torch.library.opcheck(bridge_op, ([s], [z], proj, None, None, "nmse", "none", "reference", True, True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stacked", [False, True], ids=["layer list", "stacked"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_each_backends_gradient_without_autograd_equals_autograd(backend, stacked, reduction):
    """The custom ops' backward (dispatch.resolve_vjp) against torch.autograd on the eager loss, for an arbitrary
    incoming gradient, Bridge with the projector's gradient included."""
    from oprd_kernels.dispatch import resolve_vjp

    cpu = torch.device("cpu")
    student, teacher, rows, weights, layer_map = alignment_inputs(7, stacked)
    grad = torch.rand(() if reduction == "mean" else (3,)) + 0.5
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type="nmse", reduction=reduction)
    loss = oprd_kernels.alignment_loss(student, teacher, backend=backend, **kw)
    want = torch.autograd.grad(loss, leaves(student), grad)
    got = resolve_vjp("alignment_loss", backend, cpu)(student, teacher, grad, **kw)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)

    g = torch.Generator().manual_seed(8)
    proj = torch.randn(3, 4, 7, generator=g).requires_grad_()
    teacher_z = torch.randn(3, 6, 4, generator=g)
    kw = dict(rows=rows, weights=weights, loss_type="mse", reduction=reduction)
    loss = oprd_kernels.bridge_loss(student, teacher_z, proj, backend=backend, **kw)
    *want, want_proj = torch.autograd.grad(loss, [*leaves(student), proj], grad)
    got_proj, got = resolve_vjp("bridge_loss", backend, cpu)(student, teacher_z, proj, grad, proj_grad=True, **kw)
    torch.testing.assert_close(got_proj, want_proj, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert resolve_vjp("bridge_loss", backend, cpu)(student, teacher_z, proj, grad, **kw)[0] is None
