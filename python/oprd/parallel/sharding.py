"""FSDP2 for the trainer: `fully_shard` per decoder block and at the root, and the whole (unsharded) state of a
sharded model for checkpoints.

A sharded model runs differently in three places, each keyed on `oprd.parallel.fsdp_check.is_fsdp_module`, so that any
FSDP2 model handed to oprd (not only the trainer's) gets it: capture goes through the root module's forward, so that
FSDP's hooks unshard the embedding, norm and head (`oprd.capture`); generation runs in lockstep on every rank
(`synced_gpus`), since each forward all-gathers; and the fused OPD losses read the LM-head weight while the root
still holds it unsharded after its forward (FSDP2 keeps the root's parameters gathered for backward).

Gradients are summed over the ranks, not averaged: each rank's loss is already its share of the whole window's
(`oprd.train.accumulation`), as in the replicated strategy.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from oprd.parallel.fsdp_check import FSDPModule

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on rank 0's CPU
_GATHERED = StateDictOptions(full_state_dict=True)  # gathered whole on every rank, on its device
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
# a parameter that never had a gradient (the LM head under OPRD alone) has no optimizer state, as in one process
_OPTIMIZER_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)


def shard_model(model: nn.Module, blocks: Iterable[nn.Module], *, trainable: bool) -> nn.Module:
    """`model` sharded in place: each of its decoder `blocks` its own FSDP unit (gathered only while it runs), the
    rest (embedding, final norm, LM head) the root's. A trainable model sums its gradients over the ranks."""
    if FSDPModule is None:
        raise ValueError(f"parallel.strategy 'fsdp2' needs a torch with FSDP2 (torch.distributed.fsdp.fully_shard); "
                         f"this is torch {torch.__version__}: use parallel.strategy=ddp")
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    if trainable:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    return model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0's CPU (empty on the other ranks). Every rank must call it."""
    return get_model_state_dict(model, options=_FULL)


def gathered_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on every rank (each rank's rollout engine needs all of it). Every rank must call it."""
    return get_model_state_dict(model, options=_GATHERED)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state on rank 0's CPU, keyed by parameter names. Every rank must call it."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                    optimizer_state: dict | None) -> None:
    """Rank 0's whole states (the other ranks pass empty dicts) scattered into the sharded model and optimizer."""
    set_model_state_dict(model, model_state, options=_FROM_RANK0)
    if optimizer is None:
        return
    set_optimizer_state_dict(model, optimizer, optimizer_state or {}, options=_OPTIMIZER_FROM_RANK0)
    # set_optimizer_state_dict gives every parameter a state (one zero-gradient step); a parameter that had none in
    # the checkpoint must have none again, or its first real step would count from 2. And its param groups come
    # back with lists where AdamW keeps tuples (betas): restored, so the next checkpoint is the same bytes.
    saved = [set((optimizer_state or {}).get("state", {}))]
    torch.distributed.broadcast_object_list(saved, src=0)
    for name, param in model.named_parameters():
        if name not in saved[0]:
            optimizer.state.pop(param, None)
    for group in optimizer.param_groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
