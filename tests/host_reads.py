"""A counter of Tensor -> Python conversions (each one a host synchronisation on a GPU), for tests that a path makes
none: `reads = HostReads(monkeypatch)`, run the path, `assert reads.count == 0`."""

from __future__ import annotations

import torch

CONVERSIONS = ("__bool__", "__int__", "__float__", "item", "tolist")


class HostReads:
    def __init__(self, monkeypatch, conversions=CONVERSIONS):
        self.count = 0
        for name in conversions:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, real):
        def wrapper(tensor, *args):
            self.count += 1
            return real(tensor, *args)
        return wrapper
