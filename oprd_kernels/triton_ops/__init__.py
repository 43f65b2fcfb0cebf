"""The `triton` backend: fused kernels for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1, which is how CI
tests them). Importing this package does not import triton; `unavailable_reason` says whether it can run."""

from __future__ import annotations

import importlib.util
import os

import torch


def unavailable_reason(device: torch.device | None) -> str | None:
    """None when the triton backend can run on `device`, else why it cannot."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device is not None and device.type == "cuda":
        return None
    if device is not None and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (f"triton runs CUDA tensors, and CPU tensors only under TRITON_INTERPRET=1 (set before triton is "
            f"imported); got device {device}")
