"""The triton Bridge projector gradient: dZ written by the backward, then dP_l = dZ_l^T @ S_l by a GEMM over the
slots, split into ranges whose partial sums are added in a fixed order. Under the interpreter, on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from oracles import randn

from oprd_kernels import reference as ref
from oprd_kernels.triton_ops import bridge as tri


@pytest.mark.parametrize("num_sel", [1, 15, 16, 17, 1000, 10**6])
@pytest.mark.parametrize("layers, dim", [(1, 16), (3, 37), (28, 1536)])
@pytest.mark.parametrize("target", [1, 8, 264, 10**6])
def test_split_covers_every_slot_once(num_sel, layers, dim, target):
    block_k, tile_d = 16, 16
    splits, chunk = tri.proj_grad_split(layers, dim, num_sel, target, block_k, tile_d)
    assert chunk % block_k == 0
    assert 1 <= splits <= tri.MAX_SPLITS
    assert (splits - 1) * chunk < num_sel <= splits * chunk  # every split has slots; together they cover all
    if target <= layers * -(-dim // tile_d):
        assert splits == 1  # enough programs without splitting: one sum, no partials


def bridge_inputs(gen, L, B, S, D, r, n_sel, dtype=torch.float32):
    student = [randn(gen, B, S, D, dtype=dtype).requires_grad_() for _ in range(L)]
    proj = (randn(gen, L, r, D) / D**0.5).to(dtype).requires_grad_()
    rows = torch.randint(0, B * S, (n_sel,), generator=gen)
    rows[3] = rows[0]
    teacher_z = randn(gen, L, n_sel, r, dtype=dtype)
    return student, teacher_z, proj, rows


def proj_grad(student, teacher_z, proj, rows, fn=tri.bridge_loss, **kw):
    p = proj.detach().clone().requires_grad_()
    leaves = [s.detach().clone().requires_grad_() for s in student]
    out = fn(leaves, teacher_z, p, rows=rows, **kw)
    (g,) = torch.autograd.grad(out, [p])
    return g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_splits_match_the_reference_and_repeat_bitwise(gen, monkeypatch, dtype):
    student, teacher_z, proj, rows = bridge_inputs(gen, L=2, B=2, S=40, D=21, r=5, n_sel=75, dtype=dtype)
    calls = []
    monkeypatch.setattr(tri, "PROJ_GRAD_TARGET", {"cpu": 10**6})
    split = tri.proj_grad_split
    monkeypatch.setattr(tri, "proj_grad_split", lambda *a: calls.append(split(*a)) or calls[-1])
    got = proj_grad(student, teacher_z, proj, rows, loss_type="cosine")
    assert calls[0][0] == 5  # 75 slots in 16-slot steps: five splits, five partial sums
    want = proj_grad(student, teacher_z, proj, rows, fn=ref.bridge_loss, loss_type="cosine")
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    assert torch.equal(proj_grad(student, teacher_z, proj, rows, loss_type="cosine"), got)


def test_split_count_is_capped(gen, monkeypatch):
    monkeypatch.setattr(tri, "PROJ_GRAD_TARGET", {"cpu": 10**6})
    monkeypatch.setattr(tri, "MAX_SPLITS", 2)
    student, teacher_z, proj, rows = bridge_inputs(gen, L=1, B=1, S=80, D=16, r=2, n_sel=70)
    assert tri.proj_grad_split(1, 16, 70, 10**6, 16, 16) == (2, 48)
    torch.testing.assert_close(proj_grad(student, teacher_z, proj, rows, loss_type="mse"),
                               proj_grad(student, teacher_z, proj, rows, fn=ref.bridge_loss, loss_type="mse"),
                               rtol=2e-5, atol=1e-6)
