"""What is particular to the C++ cpu backend: bitwise determinism (two runs, one or two OpenMP threads), the two
gradient schedules giving the same bits, and CPU tensors dispatching to it by default. Its agreement with the
reference is tested with the triton backend's matrix (tests/test_backend_*.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from oracles import make_rows, randn

import oprd_kernels
from oprd_kernels import dispatch, reference
from oprd_kernels.cpu_ops import alignment as cpu_alignment
from oprd_kernels.cpu_ops.alignment import alignment_loss
from oprd_kernels.cpu_ops.bridge import bridge_loss

ROOT = Path(__file__).resolve().parents[1]

# One script computes losses and gradients of both ops on fixed inputs, with repeated rows, and prints a digest of
# every output's bytes: equal digests mean bitwise-equal results.
DIGEST_SCRIPT = """
import hashlib, torch
from oprd_kernels.cpu_ops.alignment import alignment_loss
from oprd_kernels.cpu_ops.bridge import bridge_loss
g = torch.Generator().manual_seed(0)
student = [torch.randn(3, 50, 97, generator=g).bfloat16().requires_grad_() for _ in range(4)]
rows = torch.randint(0, 150, (120,), generator=g)
teacher = torch.randn(4, 120, 97, generator=g).bfloat16()
proj = torch.randn(4, 8, 97, generator=g).requires_grad_()
z = torch.randn(4, 120, 8, generator=g)
digest = hashlib.sha256()
for loss_type in ("mse", "nmse", "cosine"):
    for fn, args in ((alignment_loss, (student, teacher)), (bridge_loss, (student, z, proj))):
        out = fn(*args, rows=rows, loss_type=loss_type)
        inputs = student + ([proj] if fn is bridge_loss else [])
        for t in (out, *torch.autograd.grad(out, inputs)):
            digest.update(t.detach().float().numpy().tobytes())
print(digest.hexdigest())
"""


def digest_with_threads(threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_results_are_bitwise_identical_for_any_thread_count():
    one, two, again = digest_with_threads(1), digest_with_threads(2), digest_with_threads(2)
    assert one == two == again


CHECK_SCRIPT = """
import torch
from oprd_kernels import _C, reference
from oprd_kernels.cpu_ops.alignment import alignment_loss
from oprd_kernels.cpu_ops.bridge import bridge_loss
g = torch.Generator().manual_seed(1)
student = [torch.randn(2, 20, 53, generator=g).requires_grad_() for _ in range(3)]
rows = torch.randint(0, 40, (25,), generator=g)
teacher = torch.randn(3, 25, 53, generator=g)
proj = torch.randn(3, 5, 53, generator=g).requires_grad_()
z = torch.randn(3, 25, 5, generator=g)
worst = 0.0
for loss_type in ("mse", "nmse", "cosine"):
    for fast, ref, args in ((alignment_loss, reference.alignment_loss, (student, teacher)),
                            (bridge_loss, reference.bridge_loss, (student, z, proj))):
        inputs = student + ([proj] if fast is bridge_loss else [])
        a, b = fast(*args, rows=rows, loss_type=loss_type), ref(*args, rows=rows, loss_type=loss_type)
        for x, y in zip((a, *torch.autograd.grad(a, inputs)), (b, *torch.autograd.grad(b, inputs))):
            worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-6)))
print(_C.kernel_isa(), worst)
"""


@pytest.mark.parametrize("isa", ["base", "default"])
def test_every_instruction_set_variant_matches_the_reference(isa):
    env = {k: v for k, v in os.environ.items() if k != "OPRD_CPU_ISA"}
    if isa == "base":
        env["OPRD_CPU_ISA"] = "base"
    out = subprocess.run([sys.executable, "-c", CHECK_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, worst = out.stdout.split()
    variants = oprd_kernels.build_info()["kernel_variants"]
    assert chosen == ("base" if isa == "base" else oprd_kernels.build_info()["kernel_isa"]) and chosen in variants
    assert float(worst) < 1e-5


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().double().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("loss_type", ["mse", "nmse", "cosine"])
def test_gradient_in_forward_and_in_backward_give_the_same_bits(gen, monkeypatch, loss_type):
    student = [randn(gen, 2, 7, 33, dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
    rows = make_rows(gen, "repeats", 14, 10)
    teacher = randn(gen, 3, 10, 33, dtype=torch.bfloat16)
    proj = randn(gen, 3, 4, 33, dtype=torch.float32).requires_grad_()
    z = randn(gen, 3, 10, 4, dtype=torch.float32)

    def run():
        a = alignment_loss(student, teacher, rows=rows, loss_type=loss_type)
        b = bridge_loss(student, z, proj, rows=rows, loss_type=loss_type)
        return [a, b, *torch.autograd.grad(a, student), *torch.autograd.grad(b, [*student, proj])]

    monkeypatch.setattr(cpu_alignment, "GRADIENT_IN_FORWARD", True)
    in_forward = run()
    monkeypatch.setattr(cpu_alignment, "GRADIENT_IN_FORWARD", False)
    in_backward = run()
    assert _digest(in_forward) == _digest(in_backward)


@pytest.mark.parametrize("scale", [1.0, 3.5, -0.25])
def test_weighted_objective_scales_the_gradients(gen, scale):
    """`mu * L_OPRD`: an incoming gradient other than 1 triggers the backward sweep."""
    student = [randn(gen, 2, 6, 19, dtype=torch.float32).requires_grad_() for _ in range(2)]
    rows = make_rows(gen, "perm", 12, 8)
    teacher = randn(gen, 2, 8, 19, dtype=torch.float32)
    got = torch.autograd.grad(scale * alignment_loss(student, teacher, rows=rows, loss_type="nmse"), student)
    want = torch.autograd.grad(scale * reference.alignment_loss(student, teacher, rows=rows, loss_type="nmse"),
                               student)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_cpu_tensors_use_the_cpu_backend_by_default(gen, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert oprd_kernels.backend_status("cpu")["cpu"] == {"alignment_loss": "available", "bridge_loss": "available"}
    assert dispatch.resolve("alignment_loss", None, torch.device("cpu"))[0] == "cpu"
    assert dispatch.resolve("bridge_loss", None, torch.device("cpu"))[0] == "cpu"
    student = [randn(gen, 2, 3, 8, dtype=torch.float32) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        oprd_kernels.alignment_loss(student, randn(gen, 2, 6, 8, dtype=torch.float32))


def test_no_gradient_work_without_grad(gen):
    student = [randn(gen, 2, 3, 8, dtype=torch.float32) for _ in range(2)]
    out = alignment_loss(student, randn(gen, 2, 6, 8, dtype=torch.float32))
    assert not out.requires_grad and out.grad_fn is None


def test_rejects_tensors_on_another_device(gen):
    student = [torch.randn(2, 3, 8, device="meta") for _ in range(2)]
    with pytest.raises(ValueError, match="the cpu backend needs CPU tensors; got device meta"):
        alignment_loss(student, torch.randn(2, 6, 8, device="meta"))
