"""Checks shared by every per-position input, written once: final hidden states, LM-head weights, masks and token
ids (the fused OPD losses, lm_head_stats, the reference OPD losses and the trainer's position selection use them).

Checks of values (mask entries 0/1, ids in range) read the tensor. On the host path they raise a ValueError naming
the values seen. With `on_device=True` (CUDA tensors: `reads_on_device(device)`) they become asynchronous device
asserts instead, so that a call makes no host synchronisation for them, as the alignment kernels already do
(`_validation.assert_values_async`): a violation then surfaces at the next synchronisation as a device-side
assertion carrying the same "func: `arg` must ..." message.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oprd_kernels._validation import check_float_tensor, check_has_data, check_same_device, describe, fail


def reads_on_device(device: torch.device) -> bool:
    """Whether value checks on `device` run as device asserts (CUDA) rather than host reads."""
    return device.type == "cuda"


def check_final_hidden(func: str, arg: str, hidden: object) -> torch.Size:
    """Final hidden states [N, d] or [B, T, d] with d >= 1, holding data; returns the positions' shape."""
    check_float_tensor(func, arg, hidden)
    if hidden.dim() not in (2, 3) or hidden.shape[-1] == 0:
        raise fail(ValueError, func, arg, "must have shape [N, d] or [B, T, d] with d >= 1", describe(hidden))
    check_has_data(func, arg, hidden)
    return hidden.shape[:-1]


def check_lm_head(func: str, arg: str, weight: object, dim: int, device: torch.device) -> Tensor:
    """An LM-head weight [V, dim] with V >= 1 on `device`."""
    check_float_tensor(func, arg, weight)
    if weight.dim() != 2 or weight.shape[1] != dim or weight.shape[0] == 0:
        raise fail(ValueError, func, arg, f"must be an LM-head weight [V, {dim}] (V >= 1)", describe(weight))
    check_same_device(func, arg, weight, device)
    return weight


def check_mask(func: str, arg: str, mask: object, shape: torch.Size, device: torch.device, *, floats: bool = True,
               on_device: bool = False) -> Tensor | None:
    """None, or a tensor of `shape` on `device` holding only 0 and 1: bool, integer, or (with `floats`) floating."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise fail(TypeError, func, arg, "must be a bool or 0/1 tensor or None", describe(mask))
    if mask.shape != shape:
        raise fail(ValueError, func, arg, f"must have the positions' shape {tuple(shape)}", describe(mask))
    check_same_device(func, arg, mask, device)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or (mask.is_floating_point() and not floats):
        raise fail(TypeError, func, arg, "must have dtype bool or an integer dtype holding 0/1", describe(mask))
    binary = (mask == 0) | (mask == 1)
    if on_device:
        torch._assert_async(binary.all(), f"{func}: `{arg}` must hold only 0 and 1")
    elif not bool(binary.all()):
        raise fail(ValueError, func, arg, "must hold only 0 and 1", f"values {_some_values(mask[~binary])}")
    return mask


def check_id_range(func: str, arg: str, ids: Tensor, bound: int, mask: Tensor | None = None, *,
                   expected: str | None = None, on_device: bool = False) -> None:
    """Every id at an unmasked position (`mask` has the ids' leading shape) lies in [0, bound)."""
    expected = expected or f"must be token ids in [0, {bound - 1}]" + (" at unmasked positions" if mask is not None
                                                                       else "")
    in_range = (ids >= 0) & (ids < bound)
    if mask is not None:
        dead = ~mask.bool()
        in_range = in_range | (dead.reshape(*dead.shape, *(1,) * (ids.dim() - dead.dim())))
    if on_device:
        if ids.numel():
            torch._assert_async(in_range.all(), f"{func}: `{arg}` {expected}")
        return
    if not bool(in_range.all()):
        live = ids if mask is None else ids[mask.bool()]
        raise fail(ValueError, func, arg, expected, f"values in [{int(live.min())}, {int(live.max())}]")


def _some_values(x: Tensor) -> str:
    return str(sorted(set(x.reshape(-1)[:64].tolist()))[:8])
