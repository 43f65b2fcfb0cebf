"""The two capture passes and what they return: `capture_student` (with gradients, no LM head) into
`StudentStates`, and `teacher_cache` / `teacher_cache_and_final` (no gradients, truncated) into the compact cache;
the package's docstring (`oprd.capture`) describes both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from oprd.capture.families import DecoderParts, decoder_parts
from oprd.capture.taps import StopForward, tapped
from oprd.layers import resolve_layers
from oprd.parallel.fsdp_check import is_fsdp_module
from oprd_kernels._validation import describe

LayerSpec = Union[str, Sequence[int]]

@dataclass
class StudentStates:
    """The student's hidden states at `indices` ([B, S, D] each, in that order) and, when asked, the post-norm final
    state for the LM head."""

    states: list[Tensor]
    indices: list[int]
    final: Tensor | None = None


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over the unpadded tokens (0 at each sample's first real token), as HF generation does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_batch(func: str, model: nn.Module, input_ids: object, attention_mask: object) -> None:
    """A non-empty [B, S] batch of token ids the model has, and a 0/1 attention mask of its shape (reads values:
    an id past the embedding would otherwise fail deep inside the model, as an index error or a device assert)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or not _is_integer(input_ids):
        raise TypeError(f"{func}: `input_ids` must be an integer tensor [B, S]; got "
                        f"{describe(input_ids) if isinstance(input_ids, Tensor) else type(input_ids).__name__}")
    if input_ids.numel() == 0:
        raise ValueError(f"{func}: `input_ids` must hold at least one sample and one position; got shape "
                         f"{tuple(input_ids.shape)}")
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(f"{func}: `attention_mask` must have input_ids' shape {tuple(input_ids.shape)}; got "
                         f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"{func}: `attention_mask` is on {attention_mask.device}, input_ids on {input_ids.device}")
    if attention_mask.is_floating_point() or attention_mask.is_complex() or \
            not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError(f"{func}: `attention_mask` must hold only 0 and 1 (bool or integer); got "
                         f"{describe(attention_mask)} with values {attention_mask.unique()[:8].tolist()}")
    vocab = model.get_input_embeddings().num_embeddings
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"{func}: `input_ids` must be token ids of this model, in [0, {vocab - 1}] (its embedding "
                         f"has {vocab} rows); got values in [{low}, {high}]")


def _indices(func: str, layers: LayerSpec, parts: DecoderParts) -> list[int]:
    try:
        return resolve_layers(layers if isinstance(layers, str) else list(layers), parts.num_layers)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{func}: `layers`: {exc}") from None


def _run(model: nn.Module, parts: DecoderParts, input_ids: Tensor, attention_mask: Tensor, indices: list[int],
         on_output, stop_early: bool) -> None:
    position_ids = position_ids_from_mask(attention_mask)
    if is_fsdp_module(model):  # through the root's forward, whole: its hooks gather and release parameters
        head = {"logits_to_keep": 1} if parts.lm_head is not None else {}  # the head's cost: one position
        with tapped(parts, indices, on_output, stop_early=False):
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                  **head)
        return
    with tapped(parts, indices, on_output, stop_early=stop_early):
        try:
            parts.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False)
        except StopForward:
            pass


def capture_student(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: LayerSpec, *,
                    final_state: bool = False) -> StudentStates:
    """The student's hidden states at `layers` (a mode of `oprd.resolve_layers` or HF indices), with gradients.

    The LM head never runs. With final_state=True the post-norm last state is returned too (for a fused LM-head loss
    such as OPD): the whole decoder then runs. Otherwise blocks after the deepest selected layer are skipped.
    Composes with the model's gradient checkpointing.
    """
    func = "capture_student"
    parts = decoder_parts(model)
    _check_batch(func, model, input_ids, attention_mask)
    indices = _indices(func, layers, parts)
    wanted = sorted(set(indices) | ({parts.num_layers} if final_state else set()))
    captured: dict[int, Tensor] = {}
    _run(model, parts, input_ids, attention_mask, wanted, captured.__setitem__, stop_early=True)
    return StudentStates([captured[i] for i in indices], indices,
                         captured[parts.num_layers] if final_state else None)


@torch.no_grad()
def teacher_cache(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: LayerSpec, rows: Tensor, *,
                  dtype: torch.dtype = torch.bfloat16,
                  projection: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The compact teacher cache: rows `rows` (int64 into the flattened B*S positions, as `oprd.select_positions`
    gives them) of the hidden states at `layers`, stacked [L_sel, N_sel, D] in `dtype`.

    The pass stops after the deepest selected layer: later blocks, the final norm (unless index L is selected) and
    the LM head never run. With projection=(proj_t [L_sel, r, D], mean_t [L_sel, D]) the cache holds the Bridge
    projections P_T (h - mu_T) instead, [L_sel, N_sel, r] in float32 (`dtype` is then ignored).
    """
    return _cache_pass("teacher_cache", model, input_ids, attention_mask, layers, rows, dtype, projection, False)[0]


@torch.no_grad()
def teacher_cache_and_final(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: LayerSpec,
                            rows: Tensor, *, dtype: torch.dtype = torch.bfloat16,
                            projection: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One whole teacher pass for objectives that need both: the compact cache (as `teacher_cache`, Bridge
    projections included) and the post-norm final state [B, S, D] for the teacher's LM head. No other layer's states
    outlive the pass."""
    return _cache_pass("teacher_cache_and_final", model, input_ids, attention_mask, layers, rows, dtype, projection,
                       True)


def _cache_pass(func: str, model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: LayerSpec,
                rows: Tensor, dtype: torch.dtype, projection: tuple[Tensor, Tensor] | None,
                final_state: bool) -> tuple[Tensor, Tensor | None]:
    parts = decoder_parts(model)
    _check_batch(func, model, input_ids, attention_mask)
    if projection is None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{func}: `dtype` must be a floating torch.dtype for the cache (bfloat16 by default); got "
                        f"{dtype!r}")
    indices = _indices(func, layers, parts)
    num_rows = input_ids.numel()
    if not isinstance(rows, Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
        raise ValueError(f"{func}: `rows` must be a 1-D int64 tensor; got {getattr(rows, 'dtype', type(rows))}")
    if rows.device != input_ids.device:
        raise ValueError(f"{func}: `rows` is on {rows.device}, input_ids on {input_ids.device}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
        raise ValueError(f"{func}: `rows` must index this batch's {num_rows} positions (B*S = "
                         f"{input_ids.shape[0]}*{input_ids.shape[1]}); got values up to {int(rows.max())}")
    dim = model.config.hidden_size
    if projection is not None:
        proj_t, mean_t = projection
        if proj_t.dim() != 3 or proj_t.shape[0] != len(indices) or proj_t.shape[2] != dim:
            raise ValueError(f"{func}: `projection` P_T must be [L_sel, r, D] = [{len(indices)}, r, {dim}]; got "
                             f"{tuple(proj_t.shape)}")
        if mean_t.shape != (len(indices), dim):
            raise ValueError(f"{func}: `projection` mean must be [L_sel, D] = [{len(indices)}, {dim}]; got "
                             f"{tuple(mean_t.shape)}")
        cache = torch.empty(len(indices), rows.numel(), proj_t.shape[1], dtype=torch.float32, device=rows.device)
    else:
        cache = torch.empty(len(indices), rows.numel(), dim, dtype=dtype, device=rows.device)
    slot = {index: i for i, index in enumerate(indices)}
    final: list[Tensor] = []

    def keep(index: int, hidden: Tensor) -> None:
        if final_state and index == parts.num_layers:
            final.append(hidden)
        if index not in slot:
            return
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
        i = slot[index]
        if projection is None:
            cache[i] = selected
        else:
            cache[i] = (selected.float() - mean_t[i].float()) @ proj_t[i].float().T

    wanted = sorted(set(indices) | ({parts.num_layers} if final_state else set()))
    _run(model, parts, input_ids, attention_mask, wanted, keep, stop_early=True)
    return cache, final[0] if final_state else None
