"""Input checks shared by every backend: one place decides what a valid call is and how a bad one is reported.

Every failure raises `TypeError` (wrong kind or dtype) or `ValueError` (wrong shape or value) with a message of the
form "<function>: `<argument>` <what was expected>; got <what was seen>". Checks on tensor *values* (index ranges,
finiteness) read the data, which costs a host sync on a GPU; they are grouped under `check_values` so that a fast
backend can choose to skip them on its hot path. Nothing here copies a large tensor.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOSS_TYPES = ("mse", "nmse", "cosine")
REDUCTIONS = ("mean", "none")


def fail(exc: type[Exception], func: str, arg: str, expected: str, got: object) -> Exception:
    """Build the project's standard error: which function, which argument, what was expected, what was seen."""
    return exc(f"{func}: `{arg}` {expected}; got {got}")


def as_int(value: object) -> int | None:
    """`value` as a Python int when it is an integer (int, NumPy integer, any numbers.Integral) and not a bool; else
    None. Counts and sizes accept NumPy integers wherever they accept ints."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def describe(x: object) -> str:
    """Short description of a value for error messages (shape and dtype for tensors)."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}" if not isinstance(x, (list, tuple)) else f"{type(x).__name__} of length {len(x)}"


def device_of(hidden: object) -> torch.device | None:
    """Device of a hidden-state argument (a tensor or a sequence of them); None when malformed (validation reports
    it later)."""
    if isinstance(hidden, Tensor):
        return hidden.device
    if isinstance(hidden, (list, tuple)) and hidden and isinstance(hidden[0], Tensor):
        return hidden[0].device
    return None


def check_choice(func: str, arg: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(ValueError, func, arg, f"must be one of {list(choices)}", repr(value))
    return value


def check_float_tensor(func: str, arg: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise fail(TypeError, func, arg, "must be a torch.Tensor", describe(x))
    if x.dtype not in FLOAT_DTYPES:
        raise fail(TypeError, func, arg, "must have a floating dtype (float16, bfloat16, float32, float64)",
                   describe(x))
    return x


def check_same_device(func: str, arg: str, x: Tensor, device: torch.device) -> None:
    if x.device != device:
        raise fail(ValueError, func, arg, f"must be on the student's device {device}", f"device {x.device}")


def check_has_data(func: str, arg: str, x: Tensor) -> None:
    """Ops that read values (index sets, top-k, a loss) cannot run on meta tensors, which have shapes only."""
    if x.device.type == "meta":
        raise fail(ValueError, func, arg, "must hold data (a CPU or CUDA tensor): this op reads values, which meta "
                   "tensors do not have", describe(x))


@dataclass(frozen=True)
class Layers:
    """A validated stack of hidden states: the per-layer tensors as given ([B, S, D] or [N, D] each; a stacked
    [L, N, D] input is unbound into [N, D] views), never copied, plus their common facts."""

    tensors: tuple[Tensor, ...]
    num_rows: int
    dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def num_layers(self) -> int:
        return len(self.tensors)

    def flat(self) -> tuple[Tensor, ...]:
        """Per-layer [N, D] views (a copy only for a [B, S, D] layer whose strides forbid the view: reference only)."""
        return tuple(t.reshape(-1, self.dim) for t in self.tensors)


def check_layers(func: str, arg: str, x: object, *, allow_grad: bool = True) -> Layers:
    """Accept one [L, N, D] tensor or a non-empty sequence of equally shaped [B, S, D] or [N, D] tensors."""
    if isinstance(x, Tensor):
        check_float_tensor(func, arg, x)
        if x.dim() != 3:
            raise fail(ValueError, func, arg, "as one tensor must have shape [L, N, D] (or pass a sequence of "
                       "[B, S, D] tensors)", describe(x))
        if x.shape[0] == 0:
            raise fail(ValueError, func, arg, "must hold at least one layer (L >= 1)", describe(x))
        layers = tuple(x.unbind(0))
    elif isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise fail(ValueError, func, arg, "must hold at least one layer", "an empty sequence")
        first = x[0]
        for i, t in enumerate(x):
            check_float_tensor(func, f"{arg}[{i}]", t)
            if t.dim() not in (2, 3):
                raise fail(ValueError, func, f"{arg}[{i}]", "must have shape [B, S, D] or [N, D]", describe(t))
            if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
                raise fail(ValueError, func, f"{arg}[{i}]", f"must match {arg}[0] (shape {tuple(first.shape)}, "
                           f"dtype {first.dtype}, device {first.device})", describe(t))
        layers = tuple(x)
    else:
        raise fail(TypeError, func, arg, "must be a tensor [L, N, D] or a sequence of [B, S, D] tensors", describe(x))
    head = layers[0]
    if head.shape[-1] == 0:
        raise fail(ValueError, func, arg, "must have a hidden size D >= 1", describe(head))
    return Layers(layers, head.numel() // head.shape[-1], head.shape[-1], head.dtype, head.device)


def check_rows(func: str, rows: object, num_rows: int, device: torch.device, *, check_values: bool) -> Tensor | None:
    """`rows`: None or a 1-D int64 tensor of indices into the flattened B*S student rows."""
    if rows is None:
        return None
    if not isinstance(rows, Tensor):
        raise fail(TypeError, func, "rows", "must be a 1-D int64 tensor or None", describe(rows))
    if rows.dtype != torch.int64:
        raise fail(TypeError, func, "rows", "must have dtype int64", describe(rows))
    if rows.dim() != 1:
        raise fail(ValueError, func, "rows", "must be 1-D [N_sel]", describe(rows))
    check_same_device(func, "rows", rows, device)
    if check_values and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= num_rows:
            raise fail(ValueError, func, "rows",
                       f"must index the {num_rows} flattened student rows (0..{num_rows - 1})",
                       f"values in [{lo}, {hi}]")
    return rows


def check_weights(func: str, weights: object, num_sel: int, device: torch.device,
                  *, check_values: bool) -> Tensor | None:
    """`weights`: None or a [N_sel] floating tensor of finite, non-negative per-row weights."""
    if weights is None:
        return None
    check_float_tensor(func, "weights", weights)
    if weights.shape != (num_sel,):
        raise fail(ValueError, func, "weights", f"must have shape [N_sel] = ({num_sel},)", describe(weights))
    check_same_device(func, "weights", weights, device)
    if check_values and num_sel > 0:
        if not bool(torch.isfinite(weights).all()):
            raise fail(ValueError, func, "weights", "must be finite", "a NaN or infinite weight")
        if bool((weights < 0).any()):
            raise fail(ValueError, func, "weights", "must be non-negative", f"minimum {float(weights.min())}")
    return weights


def check_layer_map(func: str, layer_map: object, num_layers: int, num_teacher: int, device: torch.device,
                    *, check_values: bool) -> Tensor | None:
    """`layer_map`: None (identity, needs equal depths) or int64 [L] of teacher cache layers."""
    if layer_map is None:
        if num_teacher != num_layers:
            raise fail(ValueError, func, "layer_map", f"is required when the teacher has {num_teacher} layers and the "
                       f"student {num_layers}", "None")
        return None
    if not isinstance(layer_map, Tensor):
        raise fail(TypeError, func, "layer_map", "must be an int64 tensor [L] or None", describe(layer_map))
    if layer_map.dtype != torch.int64:
        raise fail(TypeError, func, "layer_map", "must have dtype int64", describe(layer_map))
    if layer_map.shape != (num_layers,):
        raise fail(ValueError, func, "layer_map", f"must have shape [L] = ({num_layers},)", describe(layer_map))
    check_same_device(func, "layer_map", layer_map, device)
    if check_values:
        lo, hi = int(layer_map.min()), int(layer_map.max())
        if lo < 0 or hi >= num_teacher:
            raise fail(ValueError, func, "layer_map", f"must index the {num_teacher} teacher layers "
                       f"(0..{num_teacher - 1})", f"values in [{lo}, {hi}]")
    return layer_map


def check_selection(func: str, arg: str, cache: Layers, student: Layers, rows: object, weights: object,
                    *, check_values: bool) -> tuple[Tensor | None, Tensor | None, int]:
    """(rows, weights, N_sel) after checking that the teacher-side `cache` sits on the student's device and holds one
    row per selected student row."""
    if cache.device != student.device:
        raise fail(ValueError, func, arg, f"must be on the student's device {student.device}", f"device {cache.device}")
    rows = check_rows(func, rows, student.num_rows, student.device, check_values=check_values)
    num_sel = student.num_rows if rows is None else rows.shape[0]
    if cache.num_rows != num_sel:
        what = "the number of `rows`" if rows is not None else "the student's B*S rows (rows=None)"
        raise fail(ValueError, func, arg, f"must hold one row per selected row: N_sel = {num_sel}, {what}",
                   f"{cache.num_rows} rows per layer")
    weights = check_weights(func, weights, num_sel, student.device, check_values=check_values)
    return rows, weights, num_sel


def assert_values_async(func: str, rows: Tensor | None, num_rows: int, weights: Tensor | None,
                        layer_map: Tensor | None, num_teacher: int) -> None:
    """The value checks of `check_values=True` as device-side asserts, for fast paths that must not sync with the
    host: a violation surfaces at the next synchronisation as a device assertion carrying this message."""
    if rows is not None and rows.numel() > 0:
        torch._assert_async(((rows >= 0) & (rows < num_rows)).all(),
                            f"{func}: `rows` must index the {num_rows} flattened student rows")
    if weights is not None and weights.numel() > 0:
        torch._assert_async((torch.isfinite(weights) & (weights >= 0)).all(),
                            f"{func}: `weights` must be finite and non-negative")
    if layer_map is not None:
        torch._assert_async(((layer_map >= 0) & (layer_map < num_teacher)).all(),
                            f"{func}: `layer_map` must index the {num_teacher} teacher layers")


def result_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Losses are returned in float32 (float64 when any input is float64), whatever the input precision."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


@dataclass(frozen=True)
class AlignmentInputs:
    student: Layers
    teacher: Layers
    rows: Tensor | None
    weights: Tensor | None
    layer_map: Tensor | None
    num_sel: int


def check_alignment(func: str, student, teacher, rows, weights, layer_map, loss_type, reduction,
                    *, check_values: bool = True) -> AlignmentInputs:
    """Validate the arguments of `alignment_loss` / `cosine_similarity` (see DESIGN.md for their meaning)."""
    if loss_type is not None:
        check_choice(func, "loss_type", loss_type, LOSS_TYPES)
    check_choice(func, "reduction", reduction, REDUCTIONS)
    s = check_layers(func, "student", student)
    t = check_layers(func, "teacher", teacher)
    if t.dim != s.dim:
        raise fail(ValueError, func, "teacher", f"must have the student's hidden size D = {s.dim}", f"D = {t.dim}")
    rows, weights, num_sel = check_selection(func, "teacher", t, s, rows, weights, check_values=check_values)
    layer_map = check_layer_map(func, layer_map, s.num_layers, t.num_layers, s.device, check_values=check_values)
    return AlignmentInputs(s, t, rows, weights, layer_map, num_sel)


@dataclass(frozen=True)
class BridgeInputs:
    student: Layers
    teacher_z: Layers
    proj: Tensor
    rows: Tensor | None
    weights: Tensor | None
    num_sel: int


def check_projector(func: str, arg: str, proj: object, num_layers: int, in_dim: int, device: torch.device,
                    rank: int | None = None) -> Tensor:
    """A stack of per-layer projectors [L, r, D_in]."""
    check_float_tensor(func, arg, proj)
    expected_rank = "r" if rank is None else str(rank)
    shape = f"[L, {expected_rank}, D] = [{num_layers}, {expected_rank}, {in_dim}]"
    if proj.dim() != 3 or proj.shape[0] != num_layers or proj.shape[2] != in_dim or proj.shape[1] == 0:
        raise fail(ValueError, func, arg, f"must have shape {shape}", describe(proj))
    if rank is not None and proj.shape[1] != rank:
        raise fail(ValueError, func, arg, f"must have shape {shape}", describe(proj))
    check_same_device(func, arg, proj, device)
    return proj


def check_bridge(func: str, student, teacher_z, proj, rows, weights, loss_type, reduction,
                 *, check_values: bool = True) -> BridgeInputs:
    """Validate the arguments of `bridge_loss`: teacher_z [L, N_sel, r] is already projected, one layer per student
    layer (the layer pairing is done when the cache is built), proj [L, r, D_s]."""
    check_choice(func, "loss_type", loss_type, LOSS_TYPES)
    check_choice(func, "reduction", reduction, REDUCTIONS)
    s = check_layers(func, "student", student)
    z = check_layers(func, "teacher_z", teacher_z)
    if z.num_layers != s.num_layers:
        raise fail(ValueError, func, "teacher_z", f"must hold one layer per student layer (L = {s.num_layers})",
                   f"{z.num_layers} layers")
    rows, weights, num_sel = check_selection(func, "teacher_z", z, s, rows, weights, check_values=check_values)
    proj = check_projector(func, "proj", proj, s.num_layers, s.dim, s.device, rank=z.dim)
    return BridgeInputs(s, z, proj, rows, weights, num_sel)
