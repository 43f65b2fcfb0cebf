"""Backend selection: one op, one meaning, several implementations.

`auto` picks `triton` for CUDA tensors and `cpu` (the compiled C++ kernels) for CPU tensors. A request is the
`backend=` argument, else the OPRD_BACKEND environment variable, else `auto`. A backend that cannot run an op (not
built, not installed, or not implemented yet) falls back to `reference` with a one-time warning; benchmarks check
`backend_status()` first so that a fallback never passes for a fast path.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from oprd_kernels import reference
from oprd_kernels._validation import fail

BACKENDS = ("reference", "triton", "cpu")
ENV_VAR = "OPRD_BACKEND"

# (op, backend) -> implementation. Fast backends register themselves here as they land.
_IMPLEMENTATIONS: dict[tuple[str, str], Callable] = {
    ("alignment_loss", "reference"): reference.alignment_loss,
    ("bridge_loss", "reference"): reference.bridge_loss,
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


def backend_status() -> dict[str, dict[str, str]]:
    """For each backend, for each op: "available" or the reason it is not."""
    ops = sorted({op for op, _ in _IMPLEMENTATIONS})
    return {b: {op: "available" if (op, b) in _IMPLEMENTATIONS else "not implemented yet" for op in ops}
            for b in BACKENDS}


def resolve(func: str, backend: str | None, device: torch.device | None) -> tuple[str, Callable]:
    """(backend name, implementation) that will run `func` for tensors on `device`."""
    name = requested_backend(func, backend)
    if name == "auto":
        name = _auto(device)
    impl = _IMPLEMENTATIONS.get((func, name))
    if impl is not None:
        return name, impl
    if (func, name) not in _WARNED:
        _WARNED.add((func, name))
        warnings.warn(f"oprd_kernels: backend {name!r} cannot run {func} here ({backend_status()[name][func]}); "
                      f"falling back to 'reference'", RuntimeWarning, stacklevel=3)
    return "reference", _IMPLEMENTATIONS[(func, "reference")]
