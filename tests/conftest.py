"""Shared pytest fixtures. Without CUDA, the Triton kernels run under the interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here."""

import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the runners are scripts, not a package


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per test and per parametrisation, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
