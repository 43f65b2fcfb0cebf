"""The `cpu` backend: fused C++ kernels (oprd_kernels._C, OpenMP) for CPU tensors. Importing this package does not
load the extension; `unavailable_reason` says whether the backend can run."""

from __future__ import annotations

import torch

from oprd_kernels import _build


def unavailable_reason(device: torch.device | None) -> str | None:
    """None when the cpu backend can run on `device`, else why it cannot."""
    if device is not None and device.type != "cpu":
        return f"the cpu backend runs CPU tensors; got device {device}"
    ext = _build.load_extension()
    if ext is None:
        return f"oprd_kernels._C is not built ({_build.extension_error()})"
    if not hasattr(ext, "alignment_run"):
        return "oprd_kernels._C predates the CPU kernels: rebuild with `pip install -e .`"
    return None
