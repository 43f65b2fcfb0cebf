"""The bridge file: one `bridge.safetensors` with the frozen projections of OPRD-Bridge and what they were fitted for.

Tensors: `proj_t` [L_t, r, D_t] (rows: the top-r eigenvectors of each paired teacher layer's centred covariance),
`mean_t` [L_t, D_t] (mu_T), `proj_s` [L_s, r, D_s] (the student maps P_S), all float32. The safetensors metadata
holds one JSON document: the format version, the rank, the student's hidden_states indices, the teacher's (unique,
sorted), the teacher slot of each student layer, and both models' identities. Only safetensors is read: a pickle
(the reference code's `ps_bank.pt`) is refused, never unpickled. Writes are atomic (temporary name, fsync, rename)
and verified by reading the file back.
"""

from __future__ import annotations

import json
import os
from dataclasses import InitVar, asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from oprd.runs.atomic_files import write_atomic

FORMAT = "oprd-bridge/1"
TENSORS = ("proj_t", "mean_t", "proj_s")


class BridgeFileError(ValueError):
    """A bridge file that cannot be read, or does not fit the models it is used with."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a bridge was fitted for, from the model's config (and its directory name, for messages)."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int

    @classmethod
    def of(cls, model, name: str = "") -> "ModelIdentity":
        config = getattr(model, "config", model)
        text = getattr(config, "text_config", None) or config
        return cls(name or getattr(config, "_name_or_path", "") or "", str(getattr(config, "model_type", "")),
                   int(text.hidden_size), int(text.num_hidden_layers), int(text.vocab_size))


@dataclass
class Bridge:
    rank: int
    student_layers: list[int]  # student hidden_states indices, one per aligned pair
    teacher_layers: list[int]  # the teacher's paired hidden_states indices, unique and sorted
    layer_map: list[int]  # per student layer, its teacher layer's slot in teacher_layers
    proj_t: Tensor  # [L_t, r, D_t]
    mean_t: Tensor  # [L_t, D_t]
    proj_s: Tensor  # [L_s, r, D_s]
    student: ModelIdentity
    teacher: ModelIdentity
    fit: dict = field(default_factory=dict)  # Stage 1's summary (per-layer cosine before/after, epochs, rows)
    where: InitVar[str] = "Bridge"  # how errors name it (the file, when loaded)

    def __post_init__(self, where: str) -> None:
        _check_consistent(self, where)

    def teacher_projection(self) -> tuple[Tensor, Tensor]:
        """(P_T, mu_T) for `oprd.capture.teacher_cache(projection=...)`."""
        return self.proj_t, self.mean_t

    def restricted_to(self, student_layers: list[int]) -> "Bridge":
        """The bridge for a subset of its student layers (fitted once for all, trained on some): their P_S rows and
        the teacher layers they pair with; BridgeFileError for a layer it was not fitted for."""
        missing = [i for i in student_layers if i not in self.student_layers]
        if missing or not student_layers:
            raise _fail("Bridge.restricted_to", f"`student_layers` must be a non-empty subset of the bridge's "
                                                f"{self.student_layers}; got {list(student_layers)}")
        rows = [self.student_layers.index(i) for i in sorted(set(student_layers))]
        slots = sorted({self.layer_map[r] for r in rows})
        return replace(self, student_layers=[self.student_layers[r] for r in rows],
                       teacher_layers=[self.teacher_layers[t] for t in slots],
                       layer_map=[slots.index(self.layer_map[r]) for r in rows],
                       proj_t=self.proj_t[slots], mean_t=self.mean_t[slots], proj_s=self.proj_s[rows])

    def to(self, device) -> "Bridge":
        """A copy with its tensors on `device` (the trainer's)."""
        return replace(self, **{name: getattr(self, name).to(device) for name in TENSORS})


def _fail(where: str, what: str) -> BridgeFileError:
    return BridgeFileError(f"{where}: {what}")


def _check_consistent(b: Bridge, where: str) -> None:
    """Shapes and layer lists that agree with each other (not yet with any model)."""
    if not isinstance(b.rank, int) or isinstance(b.rank, bool) or b.rank < 1:
        raise _fail(where, f"`rank` must be an int >= 1; got {b.rank!r}")
    for name in TENSORS:
        t = getattr(b, name)
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise _fail(where, f"`{name}` must be a floating tensor; got {type(t).__name__}")
        if not bool(torch.isfinite(t).all()):
            raise _fail(where, f"`{name}` holds non-finite values")
    l_s, l_t = len(b.student_layers), len(b.teacher_layers)
    if l_s < 1 or len(b.layer_map) != l_s:
        raise _fail(where, f"`layer_map` must give one teacher slot per student layer ({l_s}); got {b.layer_map}")
    if b.teacher_layers != sorted(set(b.teacher_layers)) or l_t < 1:
        raise _fail(where, f"`teacher_layers` must be unique and sorted; got {b.teacher_layers}")
    for role, layers, ident in (("student", b.student_layers, b.student), ("teacher", b.teacher_layers, b.teacher)):
        if any(not 0 <= i <= ident.num_layers for i in layers):
            raise _fail(where, f"`{role}_layers` must be hidden_states indices in [0, {ident.num_layers}]; "
                               f"got {layers}")
    if any(not 0 <= m < l_t for m in b.layer_map):
        raise _fail(where, f"`layer_map` slots must be in [0, {l_t}); got {b.layer_map}")
    expected = {"proj_t": (l_t, b.rank, b.teacher.hidden_size), "mean_t": (l_t, b.teacher.hidden_size),
                "proj_s": (l_s, b.rank, b.student.hidden_size)}
    for name, shape in expected.items():
        if tuple(getattr(b, name).shape) != shape:
            raise _fail(where, f"`{name}` must have shape {list(shape)} (layers, rank, width); got "
                               f"{list(getattr(b, name).shape)}")


def _metadata(b: Bridge) -> dict[str, str]:
    doc = {"format": FORMAT, "rank": b.rank, "student_layers": b.student_layers, "teacher_layers": b.teacher_layers,
           "layer_map": b.layer_map, "student": asdict(b.student), "teacher": asdict(b.teacher), "fit": b.fit}
    return {"oprd_bridge": json.dumps(doc)}


def save_bridge(bridge: Bridge, path: str | os.PathLike) -> Path:
    """Writes `bridge` to `path` atomically and reads it back to verify it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(bridge, name).detach().to("cpu", torch.float32).contiguous() for name in TENSORS}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=_metadata(bridge)))
    back = load_bridge(path)
    if any(not torch.equal(getattr(back, n), tensors[n]) for n in TENSORS):
        raise _fail(str(path), "the file read back differs from what was written (disk or filesystem fault)")
    return path


def load_bridge(path: str | os.PathLike) -> Bridge:
    """The bridge in a `bridge.safetensors` written by `save_bridge` (or `oprd bridge fit`); BridgeFileError names
    the file and what is wrong with it."""
    where = f"bridge file {str(path)!r}"
    path = Path(path)
    if not path.is_file():
        raise _fail(where, "no such file (write one with `oprd bridge fit`)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            missing = [n for n in TENSORS if n not in keys]
            if missing:
                raise _fail(where, f"has no tensor(s) {missing}; a bridge file holds {list(TENSORS)}")
            tensors = {n: f.get_tensor(n) for n in TENSORS}
    except SafetensorError as exc:
        raise _fail(where, f"is not a safetensors file ({exc}); bridge files are safetensors only, and a pickle such "
                           f"as the reference code's ps_bank.pt is never loaded (it can run code)") from None
    try:
        doc = json.loads(meta["oprd_bridge"])
        fmt = doc.get("format")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise _fail(where, f"has no valid oprd_bridge metadata ({type(exc).__name__}: {exc})") from None
    if fmt != FORMAT:
        raise _fail(where, f"has format {fmt!r}; this version reads {FORMAT!r}")
    try:
        bridge = Bridge(doc["rank"], list(doc["student_layers"]), list(doc["teacher_layers"]), list(doc["layer_map"]),
                        tensors["proj_t"], tensors["mean_t"], tensors["proj_s"], ModelIdentity(**doc["student"]),
                        ModelIdentity(**doc["teacher"]), dict(doc.get("fit", {})), where=where)
    except (KeyError, TypeError) as exc:
        raise _fail(where, f"has incomplete oprd_bridge metadata ({type(exc).__name__}: {exc})") from None
    return bridge


def check_bridge_fits(bridge: Bridge, student, teacher, student_layers: list[int] | None = None,
                      where: str = "bridge.path") -> None:
    """BridgeFileError unless `bridge` was fitted for models shaped like `student` and `teacher` (widths, depths,
    rank) and, when given, for every student layer the run distils (a subset of the bridge's: see restricted_to)."""
    for role, model, ident in (("student", student, bridge.student), ("teacher", teacher, bridge.teacher)):
        now = ModelIdentity.of(model)
        for key in ("hidden_size", "num_layers"):
            if getattr(now, key) != getattr(ident, key):
                raise _fail(where, f"was fitted for a {role} with {key} {getattr(ident, key)} ({ident.name!r}); "
                                   f"`model.{role}` has {getattr(now, key)}. Fit a bridge for this pair "
                                   f"(`oprd bridge collect` then `oprd bridge fit`)")
    if student_layers is not None and not set(student_layers) <= set(bridge.student_layers):
        raise _fail(where, f"aligns student layers {bridge.student_layers}; `oprd.layers` selects "
                           f"{list(student_layers)}, not all among them. Use the bridge's layers (or a subset) or "
                           f"fit one for these")
