"""`python -m oprd_kernels`: print how the kernels were built and which backends this machine can run."""

from __future__ import annotations

import json
import platform
import sys


def collect() -> dict:
    """Build and runtime facts as one JSON-serialisable dict."""
    import torch

    from oprd_kernels import _build
    from oprd_kernels.dispatch import backend_status
    from oprd_kernels.opd._passes import OPD_BACKENDS, opd_unavailable_reason, resolve_passes

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    error = _build.extension_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "extension": _build.build_info() if error is None else {"error": error},
        "backends": backend_status(),
        "opd_backends": {name: opd_unavailable_reason(name, device) or "available" for name in OPD_BACKENDS},
        "opd_auto": resolve_passes("python -m oprd_kernels", "auto", device).name,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "triton": triton_version,
    }


def main() -> int:
    facts = collect()
    print(json.dumps(facts, indent=2, sort_keys=True))
    return 0 if "error" not in facts["extension"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
