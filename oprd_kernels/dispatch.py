"""The implementations of the `oprd` family (`alignment_loss`, `bridge_loss`) and its older entry points.

Choosing a backend (the `backend=` argument, else $OPRD_BACKEND, else `auto`: triton for CUDA tensors, cpu for CPU
tensors; fallback to `reference` with a one-time warning) is the registry's job (oprd_kernels/registry.py, where the
rules are written down). This module is the family's provider: which (op, backend) pairs exist, whether they can run
on a device, how to load them. `requested_backend`, `resolve` and `backend_status` are thin wrappers over the
registry, kept for their callers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from oprd_kernels import registry
from oprd_kernels.cpu_ops import unavailable_reason as cpu_unavailable
from oprd_kernels.triton_ops import unavailable_reason as triton_unavailable

_FAMILY = registry.FAMILIES["oprd"]
BACKENDS = _FAMILY.backends
OPS = _FAMILY.ops
ENV_VAR = _FAMILY.env_var


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
# (op, backend) -> its gradient without autograd, for the custom ops' backward (oprd_kernels/custom_ops.py, _vjp.py).
_VJPS: dict[tuple[str, str], Implementation] = {
    ("alignment_loss", "reference"): Implementation("oprd_kernels.reference.vjp", "alignment_vjp"),
    ("bridge_loss", "reference"): Implementation("oprd_kernels.reference.vjp", "bridge_vjp"),
    ("alignment_loss", "triton"): Implementation("oprd_kernels.triton_ops.alignment", "alignment_vjp"),
    ("bridge_loss", "triton"): Implementation("oprd_kernels.triton_ops.bridge", "bridge_vjp"),
    ("alignment_loss", "cpu"): Implementation("oprd_kernels.cpu_ops.alignment", "alignment_vjp"),
    ("bridge_loss", "cpu"): Implementation("oprd_kernels.cpu_ops.bridge", "bridge_vjp"),
}
# (op, backend) pairs whose fallback this process has already warned about (the registry reads and fills it).
_WARNED: set[tuple[str, str]] = set()


def unavailable_reason(op: str, backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run `op` on `device`, else why not."""
    impl = _IMPLEMENTATIONS.get((op, backend))
    return "not implemented yet" if impl is None else impl.unavailable(device)


def load(op: str, backend: str) -> Callable:
    """The implementation of `op` in `backend` (the registry has checked that it can run)."""
    return _IMPLEMENTATIONS[(op, backend)].load()


def resolve_vjp(op: str, backend: str | None, device: torch.device | None) -> Callable:
    """The gradient function of the backend that runs `op` for tensors on `device` (the forward's choice)."""
    name, _ = resolve(op, backend, device)
    return _VJPS[(op, name)].load()


def requested_backend(func: str, backend: str | None) -> str:
    """The backend asked for by argument or $OPRD_BACKEND ("auto" when neither), validated."""
    return registry.requested("oprd", func, backend)


def backend_status(device: torch.device | str | None = None) -> dict[str, dict[str, str]]:
    """For each backend and op of this family: "available" on `device` (default: cuda if present, else cpu), or why
    not. `registry.backend_report()` reports every family."""
    return registry.family_status("oprd", device)


def resolve(func: str, backend: str | None, device: torch.device | None) -> tuple[str, Callable]:
    """(backend name, implementation) that will run `func` for tensors on `device`."""
    return registry.resolve("oprd", func, backend, device)
