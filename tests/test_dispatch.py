"""Backend selection of the public entry points: argument, environment variable, fallback warning."""

import warnings

import pytest
import torch

import oprd_kernels
from oprd_kernels import dispatch, reference, registry


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(dispatch, "_WARNED", set())
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(2, 3, 11, generator=g, requires_grad=True) for _ in range(2)]
    return student, torch.randn(2, 6, 11, generator=g)


def test_reference_backend_is_exactly_the_reference(fresh_warnings):
    student, teacher = inputs()
    for loss_type in ("mse", "nmse", "cosine"):
        got = oprd_kernels.alignment_loss(student, teacher, loss_type=loss_type, backend="reference")
        assert torch.equal(got, reference.alignment_loss(student, teacher, loss_type=loss_type))
    z, proj = torch.randn(2, 6, 3), torch.randn(2, 3, 11)
    assert torch.equal(oprd_kernels.bridge_loss(student, z, proj, backend="reference"),
                       reference.bridge_loss(student, z, proj))


def test_unknown_backend_names_the_argument_and_the_environment_variable(fresh_warnings, monkeypatch):
    student, teacher = inputs()
    with pytest.raises(ValueError, match=r"alignment_loss: `backend` must be one of \['auto', 'reference'"):
        oprd_kernels.alignment_loss(student, teacher, backend="cuda")
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="`OPRD_BACKEND` must be one of.*got 'fastest'"):
        oprd_kernels.bridge_loss(student, torch.randn(2, 6, 3), torch.randn(2, 3, 11))


def test_environment_variable_selects_when_no_argument_is_given(fresh_warnings, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(dispatch.ENV_VAR, " Reference ")
    assert dispatch.resolve("alignment_loss", None, cpu) == ("reference", reference.alignment_loss)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference needs no fallback: no warning
        oprd_kernels.alignment_loss(*inputs())


def test_argument_overrides_the_environment(fresh_warnings, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "not-a-backend")
    assert dispatch.resolve("bridge_loss", "reference", torch.device("cpu"))[0] == "reference"


def test_missing_backend_falls_back_once_with_a_warning(fresh_warnings, monkeypatch):
    # Make the cpu backend "available" through a spy, then remove it, so the test holds whatever is built.
    calls = []

    class Spy(dispatch.Implementation):
        def load(self):
            return lambda *args, **kwargs: calls.append(1)

    monkeypatch.setitem(dispatch._IMPLEMENTATIONS, ("alignment_loss", "cpu"), Spy("spy", "spy"))
    assert dispatch.resolve("alignment_loss", "cpu", torch.device("cpu"))[0] == "cpu"
    oprd_kernels.alignment_loss(*inputs(), backend="cpu")
    assert calls == [1]
    monkeypatch.delitem(dispatch._IMPLEMENTATIONS, ("alignment_loss", "cpu"))
    assert dispatch.backend_status()["cpu"]["alignment_loss"] == "not implemented yet"
    student, teacher = inputs()
    with pytest.warns(RuntimeWarning, match="backend 'cpu' cannot run alignment_loss"):
        got = oprd_kernels.alignment_loss(student, teacher, backend="cpu")
    assert torch.equal(got, reference.alignment_loss(student, teacher))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oprd_kernels.alignment_loss(student, teacher, backend="cpu")  # second call: silent
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oprd_kernels.alignment_loss(student, teacher)  # the same (op, backend) pair via the environment: silent


def test_auto_picks_by_device():
    for op in dispatch.OPS:
        assert registry.auto("oprd", op, torch.device("cpu")) == "cpu"
        assert registry.auto("oprd", op, torch.device("cuda", 0)) == "triton"


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in dispatch.unavailable_reason("alignment_loss", "triton", torch.device("cpu"))
    assert dispatch.unavailable_reason("alignment_loss", "triton", torch.device("cuda", 0)) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.unavailable_reason("alignment_loss", "triton", torch.device("cpu")) is None


def test_backend_status_lists_every_backend_and_op():
    status = oprd_kernels.backend_status()
    assert set(status) == set(oprd_kernels.BACKENDS)
    for ops in status.values():
        assert set(ops) == {"alignment_loss", "bridge_loss"}
    assert all(v == "available" for v in status["reference"].values())


def test_malformed_student_still_gets_the_validation_error(fresh_warnings):
    with pytest.raises(TypeError, match="`student` must be"):
        oprd_kernels.alignment_loss(42, torch.randn(1, 2, 3), backend="reference")
