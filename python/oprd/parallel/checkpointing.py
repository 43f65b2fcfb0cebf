"""A run's checkpoints when several processes train it: every rank takes part, rank 0 alone touches the files
(`oprd.runs.checkpoint`).

A save gathers a sharded student's whole state and every rank's random state to rank 0, which writes them; a
resume reads the checkpoint on every rank (each restoring its own random state), scatters a sharded student's
whole state from rank 0, and refuses a checkpoint saved by another number of processes or another
`parallel.strategy`: their random streams could not continue exactly. One process is the group of size 1, where
this is a plain save and load.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from oprd.parallel.group import Group
from oprd.parallel.sharding import full_model_state, full_optimizer_state, load_full_state
from oprd.runs.checkpoint import TrainerState, capture_rng_state, checkpoint_states, load_checkpoint, save_checkpoint


def run_strategy(group: Group, strategy: str) -> str:
    """How the student is spread over the ranks: `parallel.strategy` under several processes, "single" in one."""
    return strategy if group.active else "single"


def save_run_checkpoint(group: Group, run_dir: Path, *, model: nn.Module, optimizer, scheduler, step: int,
                        data_position: int, keep: int, strategy: str) -> None:
    """A checkpoint of step `step` written by rank 0; every rank must call it, and learns whether it was written.
    `strategy`: `run_strategy`'s ("fsdp2": the student is sharded and its whole state is gathered first)."""
    model_state, optimizer_state = ((full_model_state(model), full_optimizer_state(model, optimizer))
                                    if strategy == "fsdp2" else (None, None))
    rng_states = group.gather(capture_rng_state())
    extra = {"world_size": group.size, "parallel": strategy} if group.active else {}
    group.run_on_main(lambda: save_checkpoint(
        run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
        state=TrainerState(step, data_position, extra), keep=keep,
        rng_states=rng_states if group.active else None, model_state=model_state, optimizer_state=optimizer_state))


def load_run_checkpoint(group: Group, checkpoint: Path, *, model: nn.Module, optimizer, scheduler,
                        strategy: str) -> TrainerState:
    """The state of `checkpoint` (which rank 0's `latest_checkpoint` verified) loaded on every rank, under
    `run_strategy`'s `strategy`."""
    sharded = strategy == "fsdp2"
    whole = not sharded  # a sharded student loads rank 0's whole states below
    state = load_checkpoint(checkpoint, model=model if whole else None, optimizer=optimizer if whole else None,
                            scheduler=scheduler, verify=False, rank=group.rank)
    check_resumable(checkpoint, state, group.size, strategy)
    if sharded:
        weights, optimizer_state = checkpoint_states(checkpoint) if group.is_main else ({}, {})
        load_full_state(model, optimizer, weights, optimizer_state)
    return state


def check_resumable(checkpoint: Path, state: TrainerState, size: int, strategy: str) -> None:
    """ValueError unless `checkpoint` was saved by `size` processes under `strategy`."""
    saved_size, saved_strategy = state.extra.get("world_size", 1), state.extra.get("parallel", "single")
    if saved_size != size:
        raise ValueError(f"{checkpoint} was saved by {saved_size} process(es), this run has {size}: its random "
                         f"streams cannot continue exactly; resume with --nproc_per_node {saved_size}")
    if saved_strategy != strategy:
        raise ValueError(f"{checkpoint} was saved with parallel.strategy {saved_strategy!r}, this run has "
                         f"{strategy!r}; resume with parallel.strategy={saved_strategy}")
