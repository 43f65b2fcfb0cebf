"""Which implementation runs the fused OPD's vocabulary passes (statistics, joint KL statistics, gradient).

`chunked`: PyTorch vocabulary tiles (statistics pass, then a gradient pass that recomputes each tile; any device, the
least memory). `rowwise`: PyTorch chunks of rows over the whole vocabulary, each finished in one pass (rowwise.py;
three LM-head products like the naive path; the CPU default for fp32 heads). `triton`: fused Triton kernels (CUDA,
and CPU tensors under TRITON_INTERPRET=1 for tests), the CUDA default. The orchestration in `fused.py` and
`head_stats.py` is shared, so the backends differ in speed and memory, never in meaning. A request comes from the
`backend=` argument, else $OPRD_OPD_BACKEND, else auto by device; an unavailable backend falls back to `chunked` with
a one-time warning.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from oprd_kernels._validation import fail
from oprd_kernels.triton_ops import unavailable_reason as triton_unavailable

OPD_BACKENDS = ("chunked", "rowwise", "triton")
ENV_VAR = "OPRD_OPD_BACKEND"
_TRITON_MODULE = "oprd_kernels.triton_ops.opd"
_WARNED: set[str] = set()


@dataclass(frozen=True)
class Passes:
    name: str
    logit_stats: Callable
    reverse_kl_stats: Callable
    backprop_logits: Callable
    whole_loss: Callable | None = None  # rowwise: (loss, d_hidden, d_weight) in one pass per chunk of rows


def _chunked() -> Passes:
    from oprd_kernels.opd._gradient import backprop_logits
    from oprd_kernels.opd.stats import logit_stats, reverse_kl_stats

    return Passes("chunked", logit_stats, reverse_kl_stats, backprop_logits)


def _rowwise() -> Passes:
    from oprd_kernels.opd.rowwise import loss_and_grads

    chunked = _chunked()
    return Passes("rowwise", chunked.logit_stats, chunked.reverse_kl_stats, chunked.backprop_logits, loss_and_grads)


def opd_unavailable_reason(backend: str, device: torch.device) -> str | None:
    if backend in ("chunked", "rowwise"):
        return None
    reason = triton_unavailable(device)
    if reason is None and importlib.util.find_spec(_TRITON_MODULE) is None:
        reason = "not implemented yet"
    return reason


def resolve_passes(func: str, backend: str | None, device: torch.device,
                   weight_dtype: torch.dtype | None = None) -> Passes:
    """The passes for `backend` (None: $OPRD_OPD_BACKEND, else auto). Auto on CPU picks rowwise, except for an LM-head
    weight stored below fp32 (`weight_dtype`), whose fp32 gradient accumulator would double the gradient's memory
    there: the vocabulary tiles then keep only one block of it."""
    source, value = ("backend", backend) if backend is not None else (ENV_VAR, os.environ.get(ENV_VAR, "auto"))
    if not isinstance(value, str) or value.strip().lower() not in ("auto", *OPD_BACKENDS):
        raise fail(ValueError, func, source, f"must be one of {['auto', *OPD_BACKENDS]}", repr(value))
    name = value.strip().lower()
    if name == "auto":
        if device.type == "cuda":
            name = "triton" if opd_unavailable_reason("triton", device) is None else "chunked"
        elif weight_dtype in (torch.float16, torch.bfloat16):
            name = "chunked"
        else:
            name = "rowwise"
    reason = opd_unavailable_reason(name, device)
    if reason is not None:
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(f"oprd_kernels: OPD backend {name!r} cannot run here ({reason}); falling back to 'chunked'",
                          RuntimeWarning, stacklevel=3)
        return _chunked()
    if name == "chunked":
        return _chunked()
    if name == "rowwise":
        return _rowwise()
    mod = importlib.import_module(_TRITON_MODULE)
    return Passes("triton", mod.logit_stats, mod.reverse_kl_stats, mod.backprop_logits)
