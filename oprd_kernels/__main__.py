"""`python -m oprd_kernels`: print how the kernels were built and which backends this machine can run (the backend
registry's report, oprd_kernels/registry.py: `backend_report`)."""

from __future__ import annotations

import json
import platform
import sys


def collect() -> dict:
    """Build and runtime facts as one JSON-serialisable dict."""
    import torch

    from oprd_kernels import _build
    from oprd_kernels.registry import backend_report

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    error = _build.extension_error()
    registry = backend_report()
    opd = registry["opd"]
    return {
        "extension": _build.build_info() if error is None else {"error": error},
        "registry": registry,
        # Views of the registry kept for their readers: the `oprd` family's table, and the `opd` family's per backend
        # (its backends can run every op of the family or none) with its auto pick for an fp32 LM head.
        "backends": registry["oprd"]["backends"],
        "opd_backends": {name: next((why for why in ops.values() if why != "available"), "available")
                         for name, ops in opd["backends"].items()},
        "opd_auto": opd["auto"][opd["ops"][0]],
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
