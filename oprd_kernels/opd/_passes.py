"""The implementations of the `opd` family: the fused OPD's vocabulary passes (statistics, joint KL statistics,
gradient), and the family's older entry points.

`chunked`: PyTorch vocabulary tiles (statistics pass, then a gradient pass that recomputes each tile; any device, the
least memory). `rowwise`: PyTorch chunks of rows over the whole vocabulary, each finished in one pass (rowwise.py;
three LM-head products like the naive path). `triton`: fused Triton kernels (CUDA, and CPU tensors under
TRITON_INTERPRET=1 for tests). The orchestration in `fused.py` and `head_stats.py` is shared, so the backends differ
in speed and memory, never in meaning. The generalised JSD has no Triton pass: `triton` cannot run it
(`unavailable_reason`), so the registry runs it on the fallback, `chunked`.

Choosing one (the `backend=` argument, else $OPRD_OPD_BACKEND, else `auto` by device and LM-head dtype; fallback to
`chunked` with a one-time warning) is the registry's job (oprd_kernels/registry.py, where the rules are written
down). This module is the family's provider: whether a backend can run, and its `Passes`. `resolve_passes` is a thin
wrapper over the registry.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from oprd_kernels import registry
from oprd_kernels.triton_ops import unavailable_reason as triton_unavailable

_FAMILY = registry.FAMILIES["opd"]
OPD_BACKENDS = _FAMILY.backends
ENV_VAR = _FAMILY.env_var
_TRITON_MODULE = "oprd_kernels.triton_ops.opd"
JSD_OP = "fused_generalized_jsd_loss"
NO_TRITON_JSD = "no Triton pass for the generalised JSD yet"
# (op, backend) pairs whose fallback this process has already warned about (the registry reads and fills it).
_WARNED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Passes:
    name: str
    logit_stats: Callable
    reverse_kl_stats: Callable
    backprop_logits: Callable
    whole_loss: Callable | None = None  # rowwise: (loss, d_hidden, d_weight) in one pass per chunk of rows
    # the generalised JSD's tile pass (_jsd.jsd_stats); its backend's backprop_logits takes the JSD form
    jsd_stats: Callable | None = None


def _chunked() -> Passes:
    from oprd_kernels.opd._gradient import backprop_logits
    from oprd_kernels.opd._jsd import jsd_stats
    from oprd_kernels.opd.stats import logit_stats, reverse_kl_stats

    return Passes("chunked", logit_stats, reverse_kl_stats, backprop_logits, jsd_stats=jsd_stats)


def _rowwise() -> Passes:
    from oprd_kernels.opd.rowwise import loss_and_grads

    chunked = _chunked()
    return Passes("rowwise", chunked.logit_stats, chunked.reverse_kl_stats, chunked.backprop_logits, loss_and_grads,
                  chunked.jsd_stats)


def _triton() -> Passes:
    mod = importlib.import_module(_TRITON_MODULE)
    return Passes("triton", mod.logit_stats, mod.reverse_kl_stats, mod.backprop_logits)


_LOADERS: dict[str, Callable[[], Passes]] = {"chunked": _chunked, "rowwise": _rowwise, "triton": _triton}


def opd_unavailable_reason(backend: str, device: torch.device | None) -> str | None:
    """None when `backend` can run the passes on `device`, else why not (the same for every op of the family)."""
    if backend in ("chunked", "rowwise"):
        return None
    reason = triton_unavailable(device)
    if reason is None and importlib.util.find_spec(_TRITON_MODULE) is None:
        reason = "not implemented yet"
    return reason


def unavailable_reason(op: str, backend: str, device: torch.device | None) -> str | None:
    """The registry's question, for any op of the family: opd_unavailable_reason, and for the generalised JSD on
    `triton` the missing pass (on CUDA `auto` then picks `chunked`; asking for `triton` falls back with a warning)."""
    reason = opd_unavailable_reason(backend, device)
    if reason is None and op == JSD_OP and backend == "triton":
        return f"{NO_TRITON_JSD}; the chunked passes run it"
    return reason


def load(op: str, backend: str) -> Passes:
    """The passes of `backend` (the registry has checked that it can run)."""
    return _LOADERS[backend]()


def resolve_passes(func: str, backend: str | None, device: torch.device,
                   weight_dtype: torch.dtype | None = None) -> Passes:
    """The passes that will run `func` on `device` for `backend` (None: $OPRD_OPD_BACKEND, else auto). Auto on CPU
    picks rowwise, except for an LM-head weight stored below fp32 (`weight_dtype`), whose fp32 gradient accumulator
    would double the gradient's memory there: the vocabulary tiles then keep only one block of it."""
    return registry.resolve("opd", func, backend, device, weight_dtype)[1]
