"""How many processes run a job. `oprd train` and `oprd.trainer.Trainer` are single-process: launched several times
(torchrun, mpirun, SLURM tasks), every copy would run the whole job and write the same metrics and checkpoints. Until
multi-process training exists, such a launch is refused before any model loads."""

from __future__ import annotations

import os

import torch

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


def check_single_process(where: str) -> None:
    """ValueError when this process is one of several: the trainer would run once per process and race on its files."""
    size = world_size()
    if size > 1:
        raise ValueError(f"{where}: launched as one of {size} processes (torchrun, MPI or SLURM), but training runs "
                         f"in one process: each copy would run the whole job and write the same metrics and "
                         f"checkpoints. Launch it once (python -m oprd.cli train ..., no torchrun); multi-process "
                         f"training is not supported yet")
