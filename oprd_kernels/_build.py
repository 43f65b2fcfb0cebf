"""Access to the compiled extension oprd_kernels._C, tolerant of a source tree where it was never built."""

from __future__ import annotations

import importlib
from types import ModuleType

_C: ModuleType | None = None
_C_ERROR: str | None = None


def load_extension() -> ModuleType | None:
    """Import oprd_kernels._C once; None (with the reason kept for `extension_error`) when it is not built."""
    global _C, _C_ERROR
    if _C is None and _C_ERROR is None:
        try:
            _C = importlib.import_module("oprd_kernels._C")
        except ImportError as exc:  # source checkout without `pip install -e .`
            _C_ERROR = f"{type(exc).__name__}: {exc}"
    return _C


def extension_error() -> str | None:
    """Why oprd_kernels._C could not be imported, or None when it imported."""
    load_extension()
    return _C_ERROR


def build_info() -> dict:
    """Compiler, OpenMP, CUDA and SIMD facts of the compiled extension; raises ImportError when it is missing."""
    ext = load_extension()
    if ext is None:
        raise ImportError(f"oprd_kernels._C is not built ({_C_ERROR}); run `pip install -e .` in the repository")
    return ext.build_info()
