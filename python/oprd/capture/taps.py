"""Taking hidden states out of a running decoder, and stopping it early.

Blocks are tapped by temporarily swapping each needed block in the ModuleList for a thin wrapper that calls it and
hands its output on. The wrapper sits outside the block's own gradient checkpointing, whatever the transformers
version puts inside it, so a captured tensor is always the one autograd sees. The embedding and the final norm are
tapped with forward hooks. After the deepest needed index the run can be stopped (StopForward), so the later
blocks, the norm and any head never run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from torch import Tensor, nn

from oprd.capture.families import DecoderParts


class StopForward(Exception):
    """Raised from a tap after the deepest needed layer; caught by `tapped`."""


class _Tap(nn.Module):
    def __init__(self, block: nn.Module, index: int, on_output: Callable[[int, Tensor], None], stop: bool) -> None:
        super().__init__()
        self.block = block
        self.index = index
        self.on_output = on_output
        self.stop = stop

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        self.on_output(self.index, out[0] if isinstance(out, tuple) else out)
        if self.stop:
            raise StopForward
        return out

    def __getattr__(self, name: str):  # the decoder may read attributes of its blocks (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)


@contextmanager
def tapped(parts: DecoderParts, indices: Sequence[int], on_output: Callable[[int, Tensor], None],
           stop_early: bool) -> Iterator[None]:
    """Within the block, every forward of `parts.base` calls on_output(index, tensor) for each hidden_states index
    in `indices`; with stop_early it raises StopForward right after the deepest one (unless that is the last, L)."""
    num_layers = parts.num_layers
    deepest = max(indices)
    swapped, hooks = {}, []
    try:
        for index in indices:
            if index == 0:
                hooks.append(parts.embed.register_forward_hook(lambda m, a, out: on_output(0, out)))
            elif index == num_layers:
                hooks.append(parts.norm.register_forward_hook(lambda m, a, out: on_output(num_layers, out)))
            else:
                block = parts.layers[index - 1]
                swapped[index - 1] = block
                parts.layers[index - 1] = _Tap(block, index, on_output, stop_early and index == deepest)
        if stop_early and deepest == 0:
            hooks.append(parts.embed.register_forward_hook(lambda m, a, out: _raise_stop()))
        yield
    finally:
        for position, block in swapped.items():
            parts.layers[position] = block
        for hook in hooks:
            hook.remove()


def _raise_stop() -> None:
    raise StopForward
