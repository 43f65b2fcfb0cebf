"""The fast backends' alignment loss against the reference: every test runs for `triton` and for the C++ `cpu` backend
(the `be` fixture in conftest.py). Values and gradients, every loss type, odd shapes.

Without CUDA the triton kernels run under TRITON_INTERPRET=1 (set in conftest.py) on small CPU tensors; the
`gpu`-marked tests at the end repeat the comparison for triton at full size on a CUDA device.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton
from conftest import FastBackend
from oracles import LOSS_TYPES, make_rows, make_weights, randn

from oprd_kernels import reference as ref
from oprd_kernels.triton_ops import alignment as tri_module
from oprd_kernels.triton_ops.alignment import alignment_loss as tri


@pytest.fixture
def small_tiles(monkeypatch):
    """Force D to span several tiles so the tile loop and its masking are exercised at small D."""
    monkeypatch.setattr(tri_module, "MAX_TILE_D", 16)


def make(gen, be, *, B=2, S=5, D=13, L=3, L_t=None, n_sel=7, rows="repeats", weights="random", dtype=torch.float32,
         teacher_dtype=None):
    L_t = L if L_t is None else L_t
    student = [randn(gen, B, S, D, dtype=dtype).to(be.device).requires_grad_() for _ in range(L)]
    r = make_rows(gen, rows, B * S, n_sel)
    n = B * S if r is None else r.shape[0]
    teacher = randn(gen, L_t, n, D, dtype=teacher_dtype or dtype).to(be.device)
    w = make_weights(gen, weights, n)
    w = None if w is None else w.to(torch.float32 if dtype != torch.float64 else dtype).to(be.device)
    layer_map = None
    if L_t != L:
        layer_map = torch.randint(0, L_t, (L,), generator=gen).to(be.device)
    return student, teacher, None if r is None else r.to(be.device), w, layer_map


def values_and_grads(fn, student, teacher, grad_scale=None, **kw):
    leaves = [s.detach().clone().requires_grad_(s.requires_grad) for s in student]
    out = fn(leaves, teacher, **kw)
    scale = torch.ones_like(out) if grad_scale is None else grad_scale
    needs = [s for s in leaves if s.requires_grad]
    grads = torch.autograd.grad(out, needs, scale) if needs else ()
    return out.detach(), grads


def assert_matches(be, student, teacher, tol, grad_scale=None, **kw):
    got, got_g = values_and_grads(be.alignment_loss, student, teacher, grad_scale, **kw)
    want, want_g = values_and_grads(ref.alignment_loss, student, teacher, grad_scale, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(got_g) == len(want_g)
    for g, w in zip(got_g, want_g):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


CASES = {
    # name: arguments of make()
    "L1-all-rows": dict(L=1, rows=None, weights=None, D=37),
    "L5-repeats-weights-map": dict(L=5, L_t=3, n_sel=11, D=37),
    "L5-perm-sparse-weights": dict(L=5, rows="perm", weights="sparse", D=7),
    "L2-into-4-layers-odd-D": dict(L=2, L_t=4, D=129, n_sel=4),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(be, gen, case, loss_type, dtype):
    student, teacher, rows, weights, layer_map = make(gen, be, dtype=dtype, **CASES[case])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for reduction in ("none", "mean"):
        assert_matches(be, student, teacher, tol, rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type,
                       reduction=reduction)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_several_tiles_per_row(be, gen, small_tiles, loss_type):
    student, teacher, rows, weights, layer_map = make(gen, be, D=50, L=2, L_t=3, n_sel=9)
    assert_matches(be, student, teacher, 1e-5, rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("D", [37, 32])  # a masked last tile; an EVEN_D tile
@pytest.mark.parametrize("block_r", [1, 4])
def test_row_blocks_with_a_tail_and_repeated_rows(gen, monkeypatch, loss_type, D, block_r):
    """The triton kernels' BLOCK_R rows per program: 11 entries in blocks of 4 (a tail of 3), one row repeated 4
    times (the backward's slots then need 1 to 4 rounds) and unused slots at the end; every row and gradient matches
    the reference."""
    be = FastBackend("triton", "cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(tri_module, "TILE_ELEMENTS", block_r * triton.next_power_of_2(D))
    assert tri_module.launch_options(D)["BLOCK_R"] == block_r
    assert tri_module.launch_options(D)["EVEN_D"] == (D == 32)
    student, teacher, rows, weights, layer_map = make(gen, be, D=D, L=3, L_t=2, n_sel=11)
    rows[3:7] = rows[2]
    assert_matches(be, student, teacher, 1e-5, rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type,
                   reduction="none")
    student, teacher, _, weights, _ = make(gen, be, D=D, L=2, rows=None, B=3, S=3)  # 9 rows, no row list
    assert_matches(be, student, teacher, 1e-5, weights=weights, loss_type=loss_type)


def test_launch_options_give_each_thread_16_bytes():
    """~2048 elements per program at 8 consecutive elements per thread: several rows where D is small, one tile per
    row up to 2048 columns, EVEN_D exactly when D is a multiple of the tile."""
    assert tri_module.launch_options(128) == dict(TILE_D=128, BLOCK_R=16, EVEN_D=True, num_warps=8)
    assert tri_module.launch_options(896) == dict(TILE_D=1024, BLOCK_R=2, EVEN_D=False, num_warps=8)
    assert tri_module.launch_options(1536) == dict(TILE_D=2048, BLOCK_R=1, EVEN_D=False, num_warps=8)
    assert tri_module.launch_options(4096) == dict(TILE_D=2048, BLOCK_R=1, EVEN_D=True, num_warps=8)
    assert tri_module.launch_options(7) == dict(TILE_D=8, BLOCK_R=64, EVEN_D=False, num_warps=2)
    for dim in (1, 5, 64, 100, 3000):
        opts = tri_module.launch_options(dim)
        assert opts["BLOCK_R"] * opts["TILE_D"] <= tri_module.TILE_ELEMENTS
        assert opts["BLOCK_R"] * opts["TILE_D"] >= 8 * 32 * opts["num_warps"] or opts["BLOCK_R"] == 64


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_incoming_gradient_is_applied_per_layer(be, gen, loss_type):
    student, teacher, rows, weights, _ = make(gen, be, L=3, n_sel=6)
    scale = torch.tensor([0.5, -2.0, 3.25], device=be.device)
    assert_matches(be, student, teacher, 1e-5, grad_scale=scale, rows=rows, weights=weights, loss_type=loss_type,
                   reduction="none")


def test_stacked_student_and_list_teacher(be, gen):
    L, N, D = 3, 10, 21
    student = randn(gen, L, N, D, dtype=torch.float32).to(be.device).requires_grad_()
    rows = make_rows(gen, "repeats", N, 8).to(be.device)
    teacher = [randn(gen, 8, D, dtype=torch.float32).to(be.device) for _ in range(L)]
    for loss_type in LOSS_TYPES:
        got = be.alignment_loss(student, teacher, rows=rows, loss_type=loss_type)
        want = ref.alignment_loss(student, teacher, rows=rows, loss_type=loss_type)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        (g,) = torch.autograd.grad(got, student)
        (w,) = torch.autograd.grad(want, student)
        assert g.shape == student.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("view", ["transposed", "strided-d", "strided-s", "mixed"])
def test_non_contiguous_student_views_are_read_in_place(be, gen, view):
    B, S, D, L = 3, 4, 11, 3
    bases = [randn(gen, S, B, 2 * D, dtype=torch.float32).to(be.device) for _ in range(L)]
    if view == "transposed":
        student = [b[..., :D].transpose(0, 1) for b in bases]
    elif view == "strided-d":
        student = [b.transpose(0, 1)[..., ::2] for b in bases]
    elif view == "strided-s":
        student = [randn(gen, B, 2 * S, D, dtype=torch.float32).to(be.device)[:, ::2] for _ in range(L)]
    else:
        student = [bases[0][..., :D].transpose(0, 1), randn(gen, B, S, D, dtype=torch.float32).to(be.device),
                   bases[2].transpose(0, 1)[..., 1::2]]
    student = [s.requires_grad_() if s.is_leaf else s.detach().requires_grad_() for s in student]
    assert not any(s.is_contiguous() for s in student[:1])
    rows = make_rows(gen, "perm", B * S, 7).to(be.device)
    teacher = randn(gen, L, 7, D, dtype=torch.float32).to(be.device)
    for loss_type in LOSS_TYPES:
        assert_matches(be, student, teacher, 1e-5, rows=rows, loss_type=loss_type)


def test_only_some_layers_require_grad(be, gen):
    student, teacher, rows, weights, _ = make(gen, be, L=4)
    student = [s.detach().requires_grad_(i in (1, 3)) for i, s in enumerate(student)]
    out = be.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type="nmse")
    grads = torch.autograd.grad(out, [student[1], student[3]])
    want = torch.autograd.grad(ref.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type="nmse"),
                               [student[1], student[3]])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_each_layer_gets_its_own_gradient_allocation(be, gen):
    """Autograd can then free each layer's gradient once backprop has used it, instead of holding one [L, B*S, D]
    block until the last layer is done."""
    student, teacher, rows, _, _ = make(gen, be, L=3)
    grads = torch.autograd.grad(be.alignment_loss(student, teacher, rows=rows), student)
    storages = {g.untyped_storage().data_ptr() for g in grads}
    assert len(storages) == 3 and all(g.untyped_storage().nbytes() == g.numel() * g.element_size() for g in grads)


def test_teacher_and_weights_receive_no_gradient(be, gen):
    student, teacher, rows, weights, _ = make(gen, be)
    teacher.requires_grad_()
    weights.requires_grad_()
    be.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type="cosine").backward()
    assert teacher.grad is None and weights.grad is None
    assert all(s.grad is not None for s in student)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_row_set(be, gen, loss_type):
    student, teacher, _, _, _ = make(gen, be, rows="perm", n_sel=0)
    rows = torch.empty(0, dtype=torch.int64, device=be.device)
    teacher = teacher[:, :0]
    out = be.alignment_loss(student, teacher, rows=rows, loss_type=loss_type)
    assert out.item() == 0.0
    grads = torch.autograd.grad(out, student)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("loss_type", ["nmse", "cosine"])
def test_zero_norm_rows(be, gen, loss_type):
    student, teacher, rows, weights, _ = make(gen, be, L=2, rows="perm", n_sel=6)
    with torch.no_grad():
        student[0].view(-1, student[0].shape[-1])[rows[0]] = 0  # a selected zero student row
        teacher[1, 2] = 0  # a zero teacher row
        teacher[0, 3] = 0
        student[0].view(-1, student[0].shape[-1])[rows[3]] = 0  # both zero
    assert_matches(be, student, teacher, 1e-5, rows=rows, weights=weights, loss_type=loss_type)
    got, grads = values_and_grads(be.alignment_loss, student, teacher, rows=rows, weights=weights, loss_type=loss_type)
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in grads)
    zero_row = grads[0].view(-1, grads[0].shape[-1])[rows[0]]
    assert torch.equal(zero_row, torch.zeros_like(zero_row))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("teacher_dtype", [torch.bfloat16, torch.float32])
def test_bf16_error_is_no_worse_than_the_reference(be, gen, loss_type, teacher_dtype):
    """DESIGN.md's rule: against an fp64 ground truth, the backend's bf16 error is at most the reference's own bf16
    error plus a small tolerance, for the loss and for every gradient."""
    student, teacher, rows, weights, layer_map = make(gen, be, L=3, L_t=2, D=37, n_sel=9, dtype=torch.bfloat16,
                                                      teacher_dtype=teacher_dtype)
    kw = dict(rows=rows, weights=weights, layer_map=layer_map, loss_type=loss_type, reduction="none")
    truth, truth_g = values_and_grads(ref.alignment_loss, [s.double() for s in student], teacher.double(), **kw)
    got, got_g = values_and_grads(be.alignment_loss, student, teacher, **kw)
    base, base_g = values_and_grads(ref.alignment_loss, student, teacher, **kw)
    assert got.dtype == torch.float32
    assert (got.double() - truth).abs().max() <= (base.double() - truth).abs().max() + 1e-6 * truth.abs().max()
    for g, b, t in zip(got_g, base_g, truth_g):
        assert g.dtype == torch.bfloat16
        err, base_err = (g.double() - t).norm(), (b.double() - t).norm()
        assert err <= base_err * 1.05 + 1e-6 * t.norm(), (err, base_err)


def test_autocast_does_not_change_the_result(be, gen):
    student, teacher, rows, weights, _ = make(gen, be, D=24)
    plain = be.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type="nmse")
    with torch.autocast(device_type=be.device, dtype=torch.bfloat16):
        cast = be.alignment_loss(student, teacher, rows=rows, weights=weights, loss_type="nmse")
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)


def test_deterministic_with_repeated_rows(be, gen):
    student, teacher, rows, weights, _ = make(gen, be, n_sel=12)
    rows[:6] = rows[0]  # a long run of one row
    first = values_and_grads(be.alignment_loss, student, teacher, rows=rows, weights=weights, loss_type="cosine")
    second = values_and_grads(be.alignment_loss, student, teacher, rows=rows, weights=weights, loss_type="cosine")
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_validation_errors_are_the_reference_ones(be, gen):
    student, teacher, rows, _, _ = make(gen, be)
    with pytest.raises(ValueError, match="alignment_loss: `rows` must index"):
        be.alignment_loss(student, teacher, rows=rows + 100)
    with pytest.raises(ValueError, match="alignment_loss: `loss_type` must be one of"):
        be.alignment_loss(student, teacher, rows=rows, loss_type="l2")


# ------------------------------------------------------------------------------------ GPU: the paper's sizes

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("shape", [(28, 1536, 2, 4096, 2000), (36, 4096, 1, 2048, 1000), (5, 8192, 1, 300, 77)])
def test_gpu_full_size_bf16(gen, loss_type, shape):
    L, D, B, S, k = shape
    student = [randn(gen, B, S, D, dtype=torch.bfloat16).cuda().requires_grad_() for _ in range(L)]
    rows = torch.cat([torch.arange(b * S + S - k, b * S + S) for b in range(B)]).cuda()
    teacher = (torch.stack([s.detach().reshape(-1, D)[rows] for s in student]).float()
               + 0.3 * torch.randn(L, rows.numel(), D, device="cuda")).bfloat16()
    kw = dict(rows=rows, loss_type=loss_type, reduction="none")
    truth, truth_g = values_and_grads(ref.alignment_loss, [s.double() for s in student], teacher.double(), **kw)
    got, got_g = values_and_grads(tri, student, teacher, **kw)
    base, base_g = values_and_grads(ref.alignment_loss, student, teacher, **kw)
    assert (got.double() - truth).abs().max() <= (base.double() - truth).abs().max() + 1e-6 * truth.abs().max()
    for g, b, t in zip(got_g, base_g, truth_g):
        assert (g.double() - t).norm() <= (b.double() - t).norm() * 1.05 + 1e-6 * t.norm()


def test_a_tail_block_reads_nothing_past_the_entries():
    """The last block's lanes past N_sel must not read `rows` (or the cache) beyond its end. Here the row ids after
    the 5 entries are 2^40 (a row far outside any mapping): an unclamped read would address it and crash the
    interpreter, which does not check masks on loads. Run in a subprocess, so a crash is a failure, not the end of
    the session."""
    code = """
import torch, triton
from oprd_kernels import reference
from oprd_kernels.triton_ops import alignment as tri
tri.TILE_ELEMENTS = 4 * 16  # D = 16: blocks of 4 entries, the second one 3 lanes past the end
big = torch.tensor([0, 3, 5, 3, 1] + [2**40] * 11)
rows = big[:5]
student = [torch.randn(2, 3, 16, requires_grad=True) for _ in range(2)]
teacher = torch.randn(2, 5, 16)
for loss_type in ("mse", "cosine"):
    got = tri.alignment_loss(student, teacher, rows=rows, loss_type=loss_type, reduction="none")
    g = torch.autograd.grad(got.sum(), student)
    want = reference.alignment_loss(student, teacher, rows=rows, loss_type=loss_type, reduction="none")
    w = torch.autograd.grad(want.sum(), student)
    torch.testing.assert_close(got, want)
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b)
print("OK")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "OK", (out.returncode, out.stderr[-2000:])
