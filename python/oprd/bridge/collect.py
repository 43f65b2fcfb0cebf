"""OPRD-Bridge Stage 0: the student answers prompts, both models run on the answers, and the paired rows of every
aligned layer pair (Eq. 11, `oprd.layers`) are streamed to safetensors shards with bounded memory.

Per response, at most `rows_per_response` response positions are kept (drawn without replacement, seeded): rows of
one response are strongly correlated, so many short draws from many responses describe a layer better than every
row of a few. Collection stops at `max_rows` rows (the paper's covariance used 16,384). One batch of rollouts is in
memory at a time; each shard `rows-NNNNN.safetensors` holds, for every student layer index l, `student.<l>`
[n, D_s] and `teacher.<l>` [n, D_t] (row i of both is the same token), and `positions.student` / `positions.teacher`
(int64 [n], the rows' flat positions in that batch, for checks); `manifest.json` records the pair, the layers and the
counts (written last: a directory without it is an interrupted collection).

Across tokenizers the teacher runs on its own tokenisation of the same text (`oprd.bridge.token_alignment`): the
kept positions are then drawn among the student positions that have a teacher partner.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from oprd.bridge.file import ModelIdentity
from oprd.capture import capture_student, decoder_parts, teacher_cache
from oprd.layers import hidden_state_pairs, resolve_layers
from oprd.rollout import Rollouts, generate_rollouts
from oprd.rollout.prompt_format import check_chat_template
from oprd.runs.atomic_files import write_atomic

MANIFEST = "manifest.json"
FORMAT = "oprd-bridge-rows/1"


@dataclass(frozen=True)
class CollectSettings:
    prompts_per_batch: int = 8
    responses_per_prompt: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    rows_per_response: int = 8  # response positions kept per response
    max_rows: int = 16384  # rows kept per layer in all
    seed: int = 0
    chat_template: str = "auto"  # how prompts are encoded (oprd.rollout.prompt_format): "auto" | "on" | "off"

    def __post_init__(self) -> None:
        for name in ("prompts_per_batch", "responses_per_prompt", "max_new_tokens", "rows_per_response", "max_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CollectSettings: `{name}` must be an int >= 1; got {value!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"CollectSettings: need temperature > 0 and 0 < top_p <= 1; got {self.temperature!r}, "
                             f"{self.top_p!r}")
        check_chat_template("CollectSettings", self.chat_template)


@dataclass
class Pairing:
    """Where the teacher reads one batch: its ids and mask, and the flat student rows with their teacher partners."""

    input_ids: Tensor
    attention_mask: Tensor
    student_rows: Tensor  # int64 [M], sorted, into the student's [B, S] (response positions only)
    teacher_rows: Tensor  # int64 [M], into the teacher's [B, S_t]


def same_tokens(rollouts: Rollouts) -> Pairing:
    """One tokenizer: the teacher reads the student's ids, every response position paired with itself."""
    rows = rollouts.response_mask.reshape(-1).nonzero().squeeze(1)
    return Pairing(rollouts.input_ids, rollouts.attention_mask, rows, rows)


def other_tokens(student_tokenizer, teacher_tokenizer, eos_ids: Sequence[int], chat_template: str = "auto"):
    """A `pairing` for a teacher of another tokenizer: it reads its own encoding of the same prompt and response
    text, and student positions pair with the teacher tokens ending at the same byte (token_alignment). The teacher
    encodes the prompt under `chat_template` (its own template; pass the collection's CollectSettings.chat_template)."""
    from oprd.bridge.token_alignment import teacher_view

    check_chat_template("other_tokens", chat_template)

    def pairing(rollouts: Rollouts, prompts: Sequence[str]) -> Pairing:
        view = teacher_view(rollouts, student_tokenizer, teacher_tokenizer, list(prompts),
                            student_eos_ids=list(eos_ids), chat_template=chat_template)
        return Pairing(view.input_ids, view.attention_mask, view.student_rows, view.teacher_rows)

    return pairing


def layer_pairs(student: nn.Module, teacher: nn.Module, layers="all") -> tuple[list[int], list[int]]:
    """(student hidden_states indices, the paired teacher index of each), as Stage 2 will align them."""
    num_s, num_t = decoder_parts(student).num_layers, decoder_parts(teacher).num_layers
    s_layers = resolve_layers(layers, num_s)
    return s_layers, hidden_state_pairs(s_layers, num_s, num_t)


def keep_per_response(rows: Tensor, seq_len: int, per_response: int, generator: torch.Generator) -> Tensor:
    """Indices into `rows` (flat positions, sorted): at most `per_response` of each response, drawn uniformly."""
    samples = torch.div(rows, seq_len, rounding_mode="floor").cpu()
    keep = []
    for sample in samples.unique().tolist():
        where = (samples == sample).nonzero().squeeze(1)
        if where.numel() > per_response:
            where = where[torch.randperm(where.numel(), generator=generator)[:per_response]].sort().values
        keep.append(where)
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)


def check_new_rows_dir(out: Path, name: str) -> None:
    """ValueError naming `name` when `out` already holds a collection (finished or not): rows are never mixed."""
    if (out / MANIFEST).exists() or any(out.glob("rows-*.safetensors")):
        raise ValueError(f"{name} {str(out)!r} already holds collected rows; choose a new directory")


@torch.no_grad()
def collect_rows(student: nn.Module, teacher: nn.Module, tokenizer, prompts: Sequence[str], out_dir: str | Path, *,
                 layers="all", settings: CollectSettings = CollectSettings(),
                 pairing: Callable[[Rollouts, Sequence[str]], Pairing] | None = None,
                 dtype: torch.dtype = torch.float32, on_batch: Callable[[int], None] | None = None) -> dict:
    """Stage 0 into `out_dir` (created; must not already hold a collection); returns the manifest.

    pairing(rollouts, batch_prompts): the teacher's view of a batch (default `same_tokens`; across tokenizers
    `oprd.bridge.token_alignment`). on_batch(rows so far): progress."""
    out = Path(out_dir)
    check_new_rows_dir(out, "collect_rows: `out_dir`")
    if not prompts:
        raise ValueError("collect_rows: `prompts` is empty; Stage 0 needs prompts for the student to answer")
    out.mkdir(parents=True, exist_ok=True)
    s_layers, t_paired = layer_pairs(student, teacher, layers)
    t_layers = sorted(set(t_paired))
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, shards, responses, prompts_used = 0, 0, 0, 0
    for start in range(0, len(prompts), settings.prompts_per_batch):
        if total >= settings.max_rows:
            break
        batch = list(prompts[start:start + settings.prompts_per_batch])
        rollouts = generate_rollouts(student, tokenizer, batch, responses_per_prompt=settings.responses_per_prompt,
                                     max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                     top_p=settings.top_p, chat_template=settings.chat_template)
        view = (pairing or (lambda r, _: same_tokens(r)))(rollouts, batch)
        pick = keep_per_response(view.student_rows, rollouts.input_ids.shape[1], settings.rows_per_response,
                                 generator)[: settings.max_rows - total]
        prompts_used += len(batch)
        responses += rollouts.input_ids.shape[0]
        if pick.numel() == 0:
            continue
        s_rows, t_rows = view.student_rows[pick.to(view.student_rows.device)], view.teacher_rows[pick.to(
            view.teacher_rows.device)]
        s_states = capture_student(student, rollouts.input_ids, rollouts.attention_mask, s_layers).states
        cache = teacher_cache(teacher, view.input_ids, view.attention_mask, t_layers, t_rows, dtype=dtype)
        tensors = {"positions.student": s_rows.to("cpu"), "positions.teacher": t_rows.to("cpu")}
        for s_index, state, t_index in zip(s_layers, s_states, t_paired):
            tensors[f"student.{s_index}"] = state.reshape(-1, state.shape[-1])[s_rows].to("cpu", dtype).contiguous()
            tensors[f"teacher.{s_index}"] = cache[t_layers.index(t_index)].to("cpu", dtype, copy=True)
        write_atomic(out / f"rows-{shards:05d}.safetensors", lambda f: save_file(tensors, str(f)))
        shards += 1
        total += int(pick.numel())
        if on_batch is not None:
            on_batch(total)
    manifest = {"format": FORMAT, "student": asdict(ModelIdentity.of(student)),
                "teacher": asdict(ModelIdentity.of(teacher)), "student_layers": s_layers, "teacher_layers": t_paired,
                "rows": total, "shards": shards, "prompts": prompts_used, "responses": responses,
                "dtype": str(dtype).removeprefix("torch."), "settings": asdict(settings)}
    write_atomic(out / MANIFEST, lambda f: f.write_text(json.dumps(manifest, indent=2) + "\n"))
    student.train(modes[0])
    teacher.train(modes[1])
    return manifest


def read_manifest(rows_dir: str | Path) -> dict:
    """The manifest of a finished collection (ValueError naming the directory when there is none)."""
    path = Path(rows_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{str(rows_dir)!r} holds no finished collection ({MANIFEST} missing): run "
                         f"`oprd bridge collect` into it first, or again if it was interrupted")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} has format {manifest.get('format')!r}; this version reads {FORMAT!r}")
    return manifest
