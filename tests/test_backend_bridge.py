"""The fast backends' Bridge loss against the reference: every test runs for `triton` and for the C++ `cpu` backend
(the `be` fixture in conftest.py). Values and gradients, every loss type, odd shapes.

Without CUDA the triton kernels run under TRITON_INTERPRET=1 (set in conftest.py) on small CPU tensors; the
`gpu`-marked tests at the end repeat the comparison for triton at full size on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from oracles import LOSS_TYPES, make_rows, make_weights, randn

from oprd_kernels import reference as ref
from oprd_kernels.triton_ops import bridge as tri_module
from oprd_kernels.triton_ops.bridge import bridge_loss as tri


def make(gen, be, *, B=2, S=9, D=37, L=3, r=4, n_sel=23, rows="repeats", weights="random", dtype=torch.float32,
         proj_grad=True):
    student = [randn(gen, B, S, D, dtype=dtype).to(be.device).requires_grad_() for _ in range(L)]
    rr = make_rows(gen, rows, B * S, n_sel)
    n = B * S if rr is None else rr.shape[0]
    proj = (randn(gen, L, r, D, dtype=torch.float64) / D ** 0.5).to(dtype).to(be.device).requires_grad_(proj_grad)
    teacher_z = randn(gen, L, n, r, dtype=dtype).to(be.device)
    w = make_weights(gen, weights, n)
    w = None if w is None else w.to(torch.float32 if dtype != torch.float64 else dtype).to(be.device)
    return student, teacher_z, proj, None if rr is None else rr.to(be.device), w


def values_and_grads(fn, student, teacher_z, proj, grad_scale=None, **kw):
    leaves = [s.detach().clone().requires_grad_(s.requires_grad) for s in student]
    p = proj.detach().clone().requires_grad_(proj.requires_grad)
    out = fn(leaves, teacher_z, p, **kw)
    inputs = [x for x in [*leaves, p] if x.requires_grad]
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out) if grad_scale is None else grad_scale)
    return out.detach(), grads


def assert_matches(be, student, teacher_z, proj, tol, grad_scale=None, grad_atol=None, **kw):
    got, got_g = values_and_grads(be.bridge_loss, student, teacher_z, proj, grad_scale, **kw)
    want, want_g = values_and_grads(ref.bridge_loss, student, teacher_z, proj, grad_scale, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(got_g) == len(want_g)
    for g, w in zip(got_g, want_g):
        assert g.dtype == w.dtype and g.shape == w.shape
        atol = tol * max(1.0, float(w.abs().max())) if grad_atol is None else grad_atol
        torch.testing.assert_close(g, w, rtol=tol, atol=atol)


CASES = {
    "L1-all-rows-r1": dict(L=1, r=1, rows=None, weights=None, S=5),
    "L3-repeats-across-blocks-r4": dict(L=3, r=4, n_sel=40),  # 40 entries: three blocks of 16
    "L5-perm-sparse-r20": dict(L=5, r=20, rows="perm", weights="sparse", n_sel=11, D=23),
    "L2-r64-odd-D": dict(L=2, r=64, D=97, n_sel=9),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(be, gen, case, loss_type, dtype):
    student, teacher_z, proj, rows, weights = make(gen, be, dtype=dtype, **CASES[case])
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    # At r = 1 a normalised row is +-1, so nmse and cosine have a zero gradient: both sides hold rounding noise.
    grad_atol = 1e-4 if CASES[case]["r"] == 1 and loss_type != "mse" else None
    assert_matches(be, student, teacher_z, proj, tol, grad_atol=grad_atol, rows=rows, weights=weights,
                   loss_type=loss_type, reduction="none")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_several_tiles_and_per_layer_incoming_gradient(be, gen, monkeypatch, loss_type):
    monkeypatch.setattr(tri_module, "MAX_TILE_D", 16)
    student, teacher_z, proj, rows, weights = make(gen, be, D=70, r=5, n_sel=19)
    scale = torch.tensor([1.5, -0.25, 4.0], device=be.device)
    assert_matches(be, student, teacher_z, proj, 2e-5, grad_scale=scale, rows=rows, weights=weights,
                   loss_type=loss_type, reduction="none")


def test_mean_reduction_and_frozen_projector(be, gen):
    student, teacher_z, proj, rows, weights = make(gen, be, proj_grad=False)
    for loss_type in LOSS_TYPES:
        assert_matches(be, student, teacher_z, proj, 2e-5, rows=rows, weights=weights, loss_type=loss_type)


def test_projector_alone_requires_grad(be, gen):
    """Stage 1: the backbone is frozen, only P_S learns."""
    student, teacher_z, proj, rows, weights = make(gen, be)
    student = [s.detach() for s in student]
    assert_matches(be, student, teacher_z, proj, 2e-5, rows=rows, weights=weights, loss_type="mse")


def test_stacked_student_list_teacher_and_some_layers_frozen(be, gen):
    L, N, D, r = 3, 12, 19, 6
    stacked = randn(gen, L, N, D, dtype=torch.float32).to(be.device).requires_grad_()
    proj = randn(gen, L, r, D, dtype=torch.float32).to(be.device).requires_grad_()
    rows = make_rows(gen, "repeats", N, 10).to(be.device)
    teacher_z = [randn(gen, 10, r, dtype=torch.float32).to(be.device) for _ in range(L)]
    got = be.bridge_loss(stacked, teacher_z, proj, rows=rows)
    want = ref.bridge_loss(stacked, teacher_z, proj, rows=rows)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad(got, [stacked, proj]), torch.autograd.grad(want, [stacked, proj])):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)
    as_list = [stacked[i].detach().requires_grad_(i != 1) for i in range(L)]
    got = be.bridge_loss(as_list, teacher_z, proj, rows=rows, loss_type="cosine")
    want = ref.bridge_loss(as_list, teacher_z, proj, rows=rows, loss_type="cosine")
    inputs = [as_list[0], as_list[2], proj]
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)


def test_non_contiguous_student_and_projector(be, gen):
    B, S, D, L, r = 2, 6, 17, 2, 3
    student = [randn(gen, S, B, 2 * D, dtype=torch.float32).to(be.device).transpose(0, 1)[..., ::2].requires_grad_()
               for _ in range(L)]
    proj = randn(gen, L, D, r, dtype=torch.float32).to(be.device).transpose(1, 2).requires_grad_()
    rows = make_rows(gen, "perm", B * S, 9).to(be.device)
    teacher_z = randn(gen, L, 9, r, dtype=torch.float32).to(be.device)
    assert not student[0].is_contiguous() and not proj.is_contiguous()
    for loss_type in LOSS_TYPES:
        assert_matches(be, student, teacher_z, proj, 2e-5, rows=rows, loss_type=loss_type)


PROJ_GRAD_CASES = {
    "all-rows-L2": dict(L=2, B=3, S=7, D=37, r=5, rows=None, weights=None),  # 21 slots: two blocks
    "few-rows-many-repeats-L4": dict(L=4, D=29, r=3, n_sel=50, rows="few"),  # runs of entries, unused slots
    "column-tiles-L3": dict(L=3, B=3, S=12, D=70, r=17, n_sel=33, rows="perm"),  # D over several tiles, r > 16
}


@pytest.mark.parametrize("case", PROJ_GRAD_CASES)
@pytest.mark.parametrize("student_grad", ["all", "some", "none"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projector_gradient(be, gen, case, student_grad, loss_type, dtype):
    """P_S's gradient (Stage 1 trains it, with the backbone frozen or not) against the reference."""
    kw = dict(PROJ_GRAD_CASES[case])
    few = kw.get("rows") == "few"
    if few:
        kw["rows"] = "perm"
    student, teacher_z, proj, rows, weights = make(gen, be, dtype=dtype, **kw)
    if few:  # 50 entries over 6 distinct student rows
        rows = torch.randint(0, 6, (rows.numel(),), generator=gen).to(be.device) * 3
    if student_grad != "all":
        student = [s.detach().requires_grad_(student_grad == "some" and i % 2 == 0) for i, s in enumerate(student)]
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    scale = torch.linspace(-1.5, 2.0, len(student), device=be.device)
    assert_matches(be, student, teacher_z, proj, tol, grad_scale=scale, rows=rows, weights=weights,
                   loss_type=loss_type, reduction="none")


def test_projector_gradient_is_deterministic(be, gen):
    """Two identical backward calls give bitwise identical gradients (no atomics, fixed summation order)."""
    student, teacher_z, proj, rows, weights = make(gen, be, L=2, B=3, S=16, D=40, r=6, n_sel=45)
    runs = [values_and_grads(be.bridge_loss, student, teacher_z, proj, rows=rows, weights=weights) for _ in range(2)]
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)
    assert runs[0][1][-1].shape == proj.shape and bool(runs[0][1][-1].abs().sum() > 0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bf16_frozen_student_fp32_projector(be, gen, loss_type):
    """Stage 1 as trained: bf16 backbone, frozen; fp32 projector. Error no worse than the reference's own."""
    student, teacher_z, proj, rows, weights = make(gen, be, dtype=torch.bfloat16, L=2, D=45, r=8, n_sel=30)
    student = [s.detach() for s in student]
    proj = proj.detach().float().requires_grad_()
    kw = dict(rows=rows, weights=weights, loss_type=loss_type, reduction="none")
    _, (truth,) = values_and_grads(ref.bridge_loss, [s.double() for s in student], teacher_z.double(),
                                   proj.double(), **kw)
    _, (got,) = values_and_grads(be.bridge_loss, student, teacher_z, proj, **kw)
    _, (base,) = values_and_grads(ref.bridge_loss, student, teacher_z, proj, **kw)
    assert got.dtype == torch.float32
    assert (got.double() - truth).norm() <= (base.double() - truth).norm() * 1.05 + 1e-6 * truth.norm()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_row_set(be, gen, loss_type):
    student, teacher_z, proj, _, _ = make(gen, be)
    rows = torch.empty(0, dtype=torch.int64, device=be.device)
    out = be.bridge_loss(student, teacher_z[:, :0], proj, rows=rows, loss_type=loss_type)
    assert out.item() == 0.0
    grads = torch.autograd.grad(out, [*student, proj])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("loss_type", ["nmse", "cosine"])
def test_zero_norm_projected_rows(be, gen, loss_type):
    student, teacher_z, proj, rows, weights = make(gen, be, L=2, rows="perm", n_sel=8)
    with torch.no_grad():
        student[0].view(-1, student[0].shape[-1])[rows[0]] = 0  # projects to z = 0
        teacher_z[1, 2] = 0
    assert_matches(be, student, teacher_z, proj, 2e-5, rows=rows, weights=weights, loss_type=loss_type)
    _, grads = values_and_grads(be.bridge_loss, student, teacher_z, proj, rows=rows, weights=weights,
                                loss_type=loss_type)
    assert all(torch.isfinite(g).all() for g in grads)
    zero_row = grads[0].view(-1, grads[0].shape[-1])[rows[0]]
    assert torch.equal(zero_row, torch.zeros_like(zero_row))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bf16_error_is_no_worse_than_the_reference(be, gen, loss_type):
    student, teacher_z, proj, rows, weights = make(gen, be, dtype=torch.bfloat16, r=8, n_sel=20)
    kw = dict(rows=rows, weights=weights, loss_type=loss_type, reduction="none")
    truth, truth_g = values_and_grads(ref.bridge_loss, [s.double() for s in student], teacher_z.double(),
                                      proj.double(), **kw)
    got, got_g = values_and_grads(be.bridge_loss, student, teacher_z, proj, **kw)
    base, base_g = values_and_grads(ref.bridge_loss, student, teacher_z, proj, **kw)
    assert got.dtype == torch.float32
    assert (got.double() - truth).abs().max() <= (base.double() - truth).abs().max() + 1e-6 * truth.abs().max()
    for g, b, t in zip(got_g, base_g, truth_g):
        assert g.dtype == torch.bfloat16
        err, base_err = (g.double() - t).norm(), (b.double() - t).norm()
        assert err <= base_err * 1.05 + 1e-6 * t.norm(), (err, base_err)


def test_autocast_does_not_change_the_result(be, gen):
    student, teacher_z, proj, rows, weights = make(gen, be)
    plain = be.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights)
    with torch.autocast(device_type=be.device, dtype=torch.bfloat16):
        cast = be.bridge_loss(student, teacher_z, proj, rows=rows, weights=weights)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)


def test_validation_errors_are_the_reference_ones(be, gen):
    student, teacher_z, proj, rows, _ = make(gen, be)
    with pytest.raises(ValueError, match="bridge_loss: `rows` must index"):
        be.bridge_loss(student, teacher_z, proj, rows=rows - 100)
    with pytest.raises(ValueError, match=r"bridge_loss: `proj` must have shape"):
        be.bridge_loss(student, teacher_z, proj[:, :2], rows=rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("rank", [4, 8, 64])
def test_gpu_full_size_bf16(gen, loss_type, rank):
    L, D, B, S, k = 28, 1536, 2, 4096, 2000
    student = [randn(gen, B, S, D, dtype=torch.bfloat16).cuda().requires_grad_() for _ in range(L)]
    rows = torch.cat([torch.arange(b * S + S - k, b * S + S) for b in range(B)]).cuda()
    proj = (torch.randn(L, rank, D, device="cuda") / D ** 0.5).bfloat16().requires_grad_()
    teacher_z = torch.randn(L, rows.numel(), rank, device="cuda")
    kw = dict(rows=rows, loss_type=loss_type, reduction="none")
    truth, truth_g = values_and_grads(ref.bridge_loss, [s.double() for s in student], teacher_z.double(),
                                      proj.double(), **kw)
    got, got_g = values_and_grads(tri, student, teacher_z, proj, **kw)
    base, base_g = values_and_grads(ref.bridge_loss, student, teacher_z, proj, **kw)
    assert (got.double() - truth).abs().max() <= (base.double() - truth).abs().max() + 1e-6 * truth.abs().max()
    for g, b, t in zip(got_g, base_g, truth_g):
        assert (g.double() - t).norm() <= (b.double() - t).norm() * 1.05 + 1e-6 * t.norm()
