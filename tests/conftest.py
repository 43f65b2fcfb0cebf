"""Shared pytest fixtures."""

import zlib

import pytest
import torch


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per test and per parametrisation, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
