"""The backend registry: one table of op families, one set of rules for choosing the implementation that runs an op.

Families (`FAMILIES`):

- `oprd`: `alignment_loss`, `bridge_loss`. Backends `reference` (PyTorch), `triton`, `cpu` (the C++ kernels).
  Variable `OPRD_BACKEND`. `auto`: `triton` for CUDA tensors, `cpu` otherwise. Fallback: `reference`.
- `opd`: the fused OPD losses (`fused_sampled_token_opd_loss`, `fused_topk_opd_loss`, `fused_full_vocab_opd_loss`,
  `fused_opd_loss_at_ids`, `fused_opd_loss_and_stats`, `fused_generalized_jsd_loss`) and `lm_head_stats`, i.e. their
  vocabulary passes (`triton` has none for the generalised JSD, which then runs on `chunked`).
  Backends `chunked` (PyTorch vocabulary tiles), `rowwise` (PyTorch chunks of whole rows), `triton`. Variable
  `OPRD_OPD_BACKEND`. `auto`: on CUDA `triton` when it can run there, else `chunked` (no warning); on CPU `rowwise`,
  except `chunked` for an LM-head weight stored in bf16/fp16, whose fp32 gradient accumulator would double the
  gradient's memory in `rowwise`. Fallback: `chunked`.

The rules, the same for every family:

- A request is the `backend=` argument, else the family's environment variable, else `"auto"`; case and surrounding
  spaces are ignored. Anything else is a `ValueError` naming the argument (`backend`) or the variable, the value
  seen and the choices (`requested`).
- `auto` becomes a backend by the family's rule, a function of the device and, for `opd`, the weight dtype.
- A backend that cannot run the op on the tensors' device (not installed, not built, not implemented, wrong device)
  is replaced by the family's fallback, with one `RuntimeWarning` per (op, backend) per process naming the op, the
  backend, the reason and the fallback (`resolve`). Benchmarks check `backend_report()` / `backend_status()` first,
  so that a fallback never passes for a fast path.
- `backend_report()` lists, for every family, every backend and every op: "available" or why not, plus what `auto`
  and the current environment select (`python -m oprd_kernels` prints it).

The registry holds the policy; each family's provider module holds the mechanism, imported when first needed:
`unavailable_reason(op, backend, device)` (None when it can run), `load(op, backend)` (the implementation), and
`_WARNED`, the (op, backend) pairs whose fallback this process has already warned about. The providers are
`oprd_kernels.dispatch` (implementations of `oprd`) and `oprd_kernels.opd._passes` (the `Passes` of `opd`); their
older entry points (`dispatch.resolve`, `_passes.resolve_passes`, ...) are thin wrappers over this module.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch

from oprd_kernels._validation import fail

# auto(device, weight_dtype, can_run) -> backend; can_run(backend) says whether that backend can run the op there.
AutoRule = Callable[[torch.device | None, torch.dtype | None, Callable[[str], bool]], str]


@dataclass(frozen=True)
class Family:
    """Ops that share their backends, their `auto` rule, their fallback and their environment variable."""

    name: str
    ops: tuple[str, ...]
    backends: tuple[str, ...]
    env_var: str
    auto: AutoRule
    fallback: str
    provider: str  # module with unavailable_reason(op, backend, device), load(op, backend) and _WARNED

    def provider_module(self) -> ModuleType:
        return importlib.import_module(self.provider)


def _is_cuda(device: torch.device | None) -> bool:
    return device is not None and device.type == "cuda"


def _oprd_auto(device: torch.device | None, weight_dtype: torch.dtype | None, can_run: Callable[[str], bool]) -> str:
    return "triton" if _is_cuda(device) else "cpu"


def _opd_auto(device: torch.device | None, weight_dtype: torch.dtype | None, can_run: Callable[[str], bool]) -> str:
    if _is_cuda(device):
        return "triton" if can_run("triton") else "chunked"
    return "chunked" if weight_dtype in (torch.float16, torch.bfloat16) else "rowwise"


FAMILIES: dict[str, Family] = {
    "oprd": Family("oprd", ("alignment_loss", "bridge_loss"), ("reference", "triton", "cpu"), "OPRD_BACKEND",
                   _oprd_auto, "reference", "oprd_kernels.dispatch"),
    "opd": Family("opd", ("fused_sampled_token_opd_loss", "fused_topk_opd_loss", "fused_full_vocab_opd_loss",
                          "fused_opd_loss_at_ids", "fused_opd_loss_and_stats", "fused_generalized_jsd_loss",
                          "lm_head_stats"),
                  ("chunked", "rowwise", "triton"), "OPRD_OPD_BACKEND", _opd_auto, "chunked",
                  "oprd_kernels.opd._passes"),
}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def requested(family_name: str, func: str, backend: str | None) -> str:
    """The backend `func` is asked to run on: the argument, else the family's variable, else "auto"; validated."""
    fam = FAMILIES[family_name]
    source, value = ("backend", backend) if backend is not None else (fam.env_var, os.environ.get(fam.env_var, "auto"))
    name = value.strip().lower() if isinstance(value, str) else None
    if name not in ("auto", *fam.backends):
        raise fail(ValueError, func, source, f"must be one of {['auto', *fam.backends]}", repr(value))
    return name


def auto(family_name: str, func: str, device: torch.device | None, weight_dtype: torch.dtype | None = None) -> str:
    """The backend `auto` picks for `func` on `device` (before any fallback)."""
    fam = FAMILIES[family_name]
    provider = fam.provider_module()
    return fam.auto(device, weight_dtype, lambda b: provider.unavailable_reason(func, b, device) is None)


def unavailable_reason(family_name: str, op: str, backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run `op` on `device`, else why not."""
    return FAMILIES[family_name].provider_module().unavailable_reason(op, backend, device)


def _select(fam: Family, func: str, backend: str | None, device: torch.device | None,
            weight_dtype: torch.dtype | None) -> tuple[str, str | None]:
    """(backend the request names once `auto` is applied, why it cannot run here or None)."""
    name = requested(fam.name, func, backend)
    if name == "auto":
        name = auto(fam.name, func, device, weight_dtype)
    return name, unavailable_reason(fam.name, func, name, device)


def _caller_stacklevel() -> int:
    """The `stacklevel` that attributes a warning to the first frame outside oprd_kernels (the caller's code)."""
    level, frame = 1, sys._getframe(1)  # frame 1: the function that calls warnings.warn, which is stacklevel 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _warn_fallback(fam: Family, op: str, backend: str, reason: str) -> None:
    warned = fam.provider_module()._WARNED
    if (op, backend) in warned:
        return
    warned.add((op, backend))
    warnings.warn(f"oprd_kernels: backend {backend!r} cannot run {op} here ({reason}); falling back to "
                  f"{fam.fallback!r}", RuntimeWarning, stacklevel=_caller_stacklevel())


def resolve(family_name: str, func: str, backend: str | None, device: torch.device | None,
            weight_dtype: torch.dtype | None = None) -> tuple[str, Any]:
    """(backend name, implementation) that will run `func` of `family_name` for tensors on `device`.

    `weight_dtype` is the LM-head weight's dtype for the `opd` family's `auto` rule (ignored by `oprd`)."""
    fam = FAMILIES[family_name]
    name, reason = _select(fam, func, backend, device, weight_dtype)
    if reason is not None:
        _warn_fallback(fam, func, name, reason)
        name = fam.fallback
    return name, fam.provider_module().load(func, name)


def _default_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")


def family_status(family_name: str, device: torch.device | str | None = None) -> dict[str, dict[str, str]]:
    """{backend: {op: "available" or why not}} for one family on `device` (default: cuda if present, else cpu)."""
    fam, device = FAMILIES[family_name], _default_device(device)
    return {b: {op: unavailable_reason(fam.name, op, b, device) or "available" for op in fam.ops}
            for b in fam.backends}


def backend_report(device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """For every family, on `device` (default: cuda if present, else cpu), without warning or loading anything:

    {family: {"ops": [...], "variable": its name, "request": its value (None: unset), "fallback": backend,
              "auto": {op: backend auto picks (opd: for an fp32 LM head)},
              "selected": {op: backend a call with no `backend=` argument runs, after any fallback},
              "backends": {backend: {op: "available" or why not}}}}

    An invalid variable puts its error message in "selected" instead of a dict."""
    device = _default_device(device)
    report: dict[str, dict[str, Any]] = {}
    for fam in FAMILIES.values():
        try:
            selected: dict[str, str] | str = {}
            for op in fam.ops:
                name, reason = _select(fam, op, None, device, None)
                selected[op] = name if reason is None else fam.fallback
        except ValueError as e:
            selected = str(e)
        report[fam.name] = {
            "ops": list(fam.ops),
            "variable": fam.env_var,
            "request": os.environ.get(fam.env_var),
            "fallback": fam.fallback,
            "auto": {op: auto(fam.name, op, device) for op in fam.ops},
            "selected": selected,
            "backends": family_status(fam.name, device),
        }
    return report
