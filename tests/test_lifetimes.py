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


def _grads(leaves) -> list[torch.Tensor]:
    return [t.grad.detach().cpu().reshape(-1, D) for t in leaves]


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
        t = teacher.clone().to(device) if teacher_stacked else [teacher[i].clone().to(device) for i in range(L)]
        return oprd_kernels.alignment_loss(s_in, t, rows=rows.to(device), backend=backend)

    loss = forward()
    junk = _overwrite_freed_memory(rows.numel() * D * 4)
    (scale * loss).backward()
    del junk

    ref_s = s_base.clone().requires_grad_()
    (scale * reference.alignment_loss(ref_s, teacher, rows=rows)).backward()
    got = torch.stack(_grads(leaves)) if not student_stacked else _grads(leaves)[0].reshape(L, -1, D)
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
        t = z.clone().to(device) if z_stacked else [z[i].clone().to(device) for i in range(L)]
        return oprd_kernels.bridge_loss(s_in, t, proj.clone().to(device), rows=rows.to(device), backend=backend)

    proj = proj_base.clone().requires_grad_()
    loss = forward()
    junk = _overwrite_freed_memory(rows.numel() * R * 4)
    (scale * loss).backward()
    del junk

    ref_s, ref_p = s_base.clone().requires_grad_(), proj_base.clone().requires_grad_()
    (scale * reference.bridge_loss(ref_s, z, ref_p, rows=rows)).backward()
    got = torch.stack(_grads(leaves)) if not student_stacked else _grads(leaves)[0].reshape(L, -1, D)
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
