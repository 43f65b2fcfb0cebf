"""How many processes run a job, and whether they were launched in a way the trainer can share the work across.

Several processes train together only when torchrun launched them (`oprd.parallel.group.join`, which checks the launch
here): its variables say each one's rank. Copies started by another launcher (mpirun, SLURM tasks) without them
would each run the whole job and write the same metrics and checkpoints, so such a launch is refused before any
model loads."""

from __future__ import annotations

import os

import torch

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# what launchers set: torchrun / torch.distributed (WORLD_SIZE), Open MPI, SLURM tasks
_WORLD_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")


def world_size() -> int:
    """The number of processes this one was launched with (1 when not launched by a multi-process launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    for name in _WORLD_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def check_launch(where: str) -> None:
    """ValueError when this process is one of several that torchrun did not launch: each would run the whole job."""
    size = world_size()
    if size == 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"{where}: launched as one of {size} processes, but not by torchrun (missing {missing}): "
                         f"each copy would run the whole job and write the same metrics and checkpoints. Launch "
                         f"`torchrun --nproc_per_node N -m oprd.cli train ...` (one node), or once without a launcher")
