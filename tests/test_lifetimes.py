"""What a kernel reads by address stays alive until the kernel has read it.

The fast backends read the layers of a teacher cache (or `teacher_z`) given as a sequence through offsets from its
first tensor, in the forward and again in the backward. These tests drop every caller-side reference to the
teacher-side tensors between forward and backward, fill the freed memory with garbage, and check the gradients
against the reference on copies; and check that an in-place change between forward and backward is refused.
"""

from __future__ import annotations

import gc

import pytest
import torch

import oprd_kernels
from oprd_kernels import reference

L, B, S, D, R = 3, 2, 8, 16, 4


def _overwrite_freed_memory(nbytes: int) -> list[torch.Tensor]:
    """Allocations of the freed tensors' size, full of a huge value: they take the freed blocks when any are free."""
    gc.collect()
    return [torch.full((nbytes // 4,), 1e6) for _ in range(64)]


def _student(gen: torch.Generator, stacked: bool, device: str):
    base = torch.randn(L, B * S, D, generator=gen, dtype=torch.float32)
    if stacked:
        s = base.clone().to(device).requires_grad_()
        return s, [s], base
    layers = [base[i].reshape(B, S, D).clone().to(device).requires_grad_() for i in range(L)]
    return layers, layers, base


def _student_grad(leaves, stacked: bool) -> torch.Tensor:
    """The student's gradient as [L, B*S, D], whichever form it was passed in."""
    if stacked:
        return leaves[0].grad.detach().cpu().reshape(L, -1, D)
    return torch.stack([t.grad.detach().cpu().reshape(-1, D) for t in leaves])


def _on_device(t: torch.Tensor, stacked: bool, device: str):
    """Fresh copies of a teacher-side [L, N, X] tensor: one stacked tensor or L separate ones."""
    return t.clone().to(device) if stacked else [t[i].clone().to(device) for i in range(L)]


def _backward_over_garbage(loss: torch.Tensor, scale: float, nbytes: int) -> None:
    junk = _overwrite_freed_memory(nbytes)
    (scale * loss).backward()
    del junk


def _backend_ids():
    return ["reference", "cpu", "triton"]


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend", _backend_ids())
@pytest.mark.parametrize("student_stacked", [False, True], ids=["student-list", "student-stacked"])
@pytest.mark.parametrize("teacher_stacked", [False, True], ids=["teacher-list", "teacher-stacked"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_alignment_teacher_freed_before_backward(gen, backend, student_stacked, teacher_stacked, scale):
    device = _device(backend)
    rows = torch.tensor([0, 3, 5, 3, 12, 15, 7], dtype=torch.int64)
    teacher = torch.randn(L, rows.numel(), D, generator=gen)
    s_in, leaves, s_base = _student(gen, student_stacked, device)

    def forward():  # the teacher-side tensors exist only inside this call
        t = _on_device(teacher, teacher_stacked, device)
        return oprd_kernels.alignment_loss(s_in, t, rows=rows.to(device), backend=backend)

    _backward_over_garbage(forward(), scale, rows.numel() * D * 4)

    ref_s = s_base.clone().requires_grad_()
    (scale * reference.alignment_loss(ref_s, teacher, rows=rows)).backward()
    got = _student_grad(leaves, student_stacked)
    torch.testing.assert_close(got, ref_s.grad.reshape(L, -1, D), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", _backend_ids())
@pytest.mark.parametrize("student_stacked", [False, True], ids=["student-list", "student-stacked"])
@pytest.mark.parametrize("z_stacked", [False, True], ids=["z-list", "z-stacked"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_bridge_teacher_z_freed_before_backward(gen, backend, student_stacked, z_stacked, scale):
    device = _device(backend)
    rows = torch.tensor([1, 4, 4, 9, 14], dtype=torch.int64)
    z = torch.randn(L, rows.numel(), R, generator=gen)
    proj_base = torch.randn(L, R, D, generator=gen)
    s_in, leaves, s_base = _student(gen, student_stacked, device)

    def forward():  # teacher_z and the projector the kernel reads (a copy of the leaf) exist only inside this call
        t = _on_device(z, z_stacked, device)
        return oprd_kernels.bridge_loss(s_in, t, proj.clone().to(device), rows=rows.to(device), backend=backend)

    proj = proj_base.clone().requires_grad_()
    _backward_over_garbage(forward(), scale, rows.numel() * R * 4)

    ref_s, ref_p = s_base.clone().requires_grad_(), proj_base.clone().requires_grad_()
    (scale * reference.bridge_loss(ref_s, z, ref_p, rows=rows)).backward()
    got = _student_grad(leaves, student_stacked)
    torch.testing.assert_close(got, ref_s.grad.reshape(L, -1, D), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(proj.grad, ref_p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("op", ["alignment", "bridge"])
def test_teacher_modified_in_place_is_refused(gen, backend, op):
    device = _device(backend)
    s = torch.randn(L, B * S, D, generator=gen).to(device).requires_grad_()
    if op == "alignment":
        t = [torch.randn(B * S, D, generator=gen).to(device) for _ in range(L)]
        loss = oprd_kernels.alignment_loss(s, t, backend=backend)
        arg = "teacher"
    else:
        t = [torch.randn(B * S, R, generator=gen).to(device) for _ in range(L)]
        loss = oprd_kernels.bridge_loss(s, t, torch.randn(L, R, D, generator=gen).to(device), backend=backend)
        arg = "teacher_z"
    t[1].add_(1.0)
    with pytest.raises(RuntimeError, match=rf"`{arg}` \(layer 1\) was modified in place"):
        (2.0 * loss).backward()
