"""Several processes on PyTorch's own engine (torchrun): the process group, each rank's share of the work, and the
few collectives the trainer needs.

`join` starts (or joins) the process group that torchrun's variables describe: gloo on CPU, NCCL on CUDA, each rank
on the GPU of its LOCAL_RANK. One process is the group of size 1, where every collective is the identity and nothing
is communicated, so the single-process trainer runs the same code. Every collective here is called by every rank in
the same order; a rank that fails alone (a bad run directory seen by rank 0) tells the others, through
`run_on_main`, instead of leaving them waiting.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from oprd.parallel.processes import TORCHRUN_VARIABLES, check_launch, world_size

__all__ = ["TORCHRUN_VARIABLES", "Group", "join", "leave"]

_BUCKET_ELEMENTS = 1 << 24  # gradients are summed in flat buckets of at most this many elements (64 MB in fp32)
T = TypeVar("T")
_RAISED_AS = (FileNotFoundError, ValueError, TypeError)  # the kinds another rank's failure is raised as


@dataclass(frozen=True)
class Group:
    """This process's place among the job's `size` processes, and the collectives over them."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this rank's compute device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes metrics, checkpoints and the final model."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence[T], what: str) -> list[T]:
        """This rank's contiguous 1/size of `items` (its length must divide evenly: every rank does equal work)."""
        if len(items) % self.size:
            raise ValueError(f"{what}: {len(items)} cannot be split evenly across {self.size} processes; use a "
                             f"multiple of {self.size}")
        share = len(items) // self.size
        return list(items[self.rank * share:(self.rank + 1) * share])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: Sequence[float], op) -> list[float]:
        if not self.active or not values:
            return [float(v) for v in values]
        buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(buffer, op=op)
        return buffer.tolist()

    def sum_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Every parameter's .grad replaced by its sum over the ranks, in flat buckets: one all-reduce per bucket,
        the same parameters in the same order on every rank. A parameter no rank has a gradient for keeps None (so
        AdamW leaves it alone, weight decay included, as in one process); one that only some ranks have counts as
        zeros on the others."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        anywhere = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=self.device)
        dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
        params = [p for p, has in zip(params, anywhere.tolist()) if has]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            for p, part in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(part.view_as(p.grad))

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (replicas start equal whatever each rank loaded)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def gather(self, obj: T) -> list[T]:
        """`obj` of every rank, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0, its result on every rank. When it raises, the other ranks raise its message too, as a
        FileNotFoundError, ValueError or TypeError when it is one (what the CLI reports in one line), else as a
        RuntimeError."""
        if not self.active:
            return fn()
        outcome: list = [None]
        if self.is_main:
            try:
                outcome = [("ok", fn())]
            except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here too
                kind = next((k for k in _RAISED_AS if isinstance(exc, k)), RuntimeError)
                outcome = [("error", (kind.__name__, str(exc)))]
                dist.broadcast_object_list(outcome, src=0)
                raise
        dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            name, message = value
            raise {k.__name__: k for k in _RAISED_AS}.get(name, RuntimeError)(message)
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _buckets(params: list[nn.Parameter]) -> Iterable[list[nn.Parameter]]:
    bucket, size = [], 0
    for p in params:
        if bucket and (size + p.numel() > _BUCKET_ELEMENTS or p.grad.dtype != bucket[0].grad.dtype
                       or p.grad.device != bucket[0].grad.device):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def join(device: torch.device) -> Group:
    """The group torchrun launched this process into (initialised here if nobody has yet), or the one-process group.
    Copies started by another launcher are refused (`oprd.parallel.processes.check_launch`). On CUDA each rank
    computes on cuda:LOCAL_RANK, whatever `device` index was asked for."""
    check_launch("oprd.parallel.group.join")
    if world_size() == 1:
        return Group(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), device)


def leave() -> None:
    """Destroy the process group, if there is one (at the end of `oprd train`). Every rank first collects what still
    holds the group's work (FSDP's state and pending collectives can sit in reference cycles) and waits for the
    others: a gloo worker thread left to free such tensors while the interpreter shuts down aborts the process
    ("terminate called without an active exception"), which tests/test_distributed.py's two-process launch hit in
    about 1 of 35 runs."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
