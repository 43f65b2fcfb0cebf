"""Backend selection: one op, one meaning, several implementations.

`auto` picks `triton` for CUDA tensors and `cpu` (the compiled C++ kernels) for CPU tensors. A request is the
`backend=` argument, else the OPRD_BACKEND environment variable, else `auto`. A backend that cannot run an op on the
tensors' device (not installed, not built, not implemented yet, wrong device) falls back to `reference` with a
one-time warning; benchmarks check `backend_status()` first so that a fallback never passes for a fast path.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from oprd_kernels._validation import fail
from oprd_kernels.cpu_ops import unavailable_reason as cpu_unavailable
from oprd_kernels.triton_ops import unavailable_reason as triton_unavailable

BACKENDS = ("reference", "triton", "cpu")
OPS = ("alignment_loss", "bridge_loss")
ENV_VAR = "OPRD_BACKEND"


@dataclass(frozen=True)
class Implementation:
    """An op's implementation in one backend, imported only when first used."""

    module: str
    name: str
    unavailable: Callable[[torch.device | None], str | None] = lambda device: None

    def load(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.name)


# (op, backend) -> implementation. A pair that is absent is "not implemented yet".
_IMPLEMENTATIONS: dict[tuple[str, str], Implementation] = {
    ("alignment_loss", "reference"): Implementation("oprd_kernels.reference", "alignment_loss"),
    ("bridge_loss", "reference"): Implementation("oprd_kernels.reference", "bridge_loss"),
    ("alignment_loss", "triton"): Implementation("oprd_kernels.triton_ops.alignment", "alignment_loss",
                                                 triton_unavailable),
    ("bridge_loss", "triton"): Implementation("oprd_kernels.triton_ops.bridge", "bridge_loss", triton_unavailable),
    ("alignment_loss", "cpu"): Implementation("oprd_kernels.cpu_ops.alignment", "alignment_loss", cpu_unavailable),
    ("bridge_loss", "cpu"): Implementation("oprd_kernels.cpu_ops.bridge", "bridge_loss", cpu_unavailable),
}
_WARNED: set[tuple[str, str]] = set()


def requested_backend(func: str, backend: str | None) -> str:
    """The backend asked for by argument or environment ("auto" when neither), validated."""
    source, value = ("backend", backend) if backend is not None else (ENV_VAR, os.environ.get(ENV_VAR, "auto"))
    if not isinstance(value, str) or value.strip().lower() not in ("auto", *BACKENDS):
        raise fail(ValueError, func, source, f"must be one of {['auto', *BACKENDS]}", repr(value))
    return value.strip().lower()


def _auto(device: torch.device | None) -> str:
    return "triton" if device is not None and device.type == "cuda" else "cpu"


def unavailable_reason(op: str, backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run `op` on `device`, else why not."""
    impl = _IMPLEMENTATIONS.get((op, backend))
    return "not implemented yet" if impl is None else impl.unavailable(device)


def backend_status(device: torch.device | str | None = None) -> dict[str, dict[str, str]]:
    """For each backend and op: "available" on `device` (default: cuda if present, else cpu), or why not."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {b: {op: unavailable_reason(op, b, device) or "available" for op in OPS} for b in BACKENDS}


def resolve(func: str, backend: str | None, device: torch.device | None) -> tuple[str, Callable]:
    """(backend name, implementation) that will run `func` for tensors on `device`."""
    name = requested_backend(func, backend)
    if name == "auto":
        name = _auto(device)
    reason = unavailable_reason(func, name, device)
    if reason is None:
        return name, _IMPLEMENTATIONS[(func, name)].load()
    if (func, name) not in _WARNED:
        _WARNED.add((func, name))
        warnings.warn(f"oprd_kernels: backend {name!r} cannot run {func} here ({reason}); falling back to "
                      f"'reference'", RuntimeWarning, stacklevel=3)
    return "reference", _IMPLEMENTATIONS[(func, "reference")].load()
