"""Shared pytest fixtures. Without CUDA, the Triton kernels run under the interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here."""

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per test and per parametrisation, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
