"""The checks `oprd train` and `oprd eval` run before any model loads, so that a user's mistake costs one error line
and no minutes of loading. Each error names the config key (or flag) and the file, and says what to do.

`check_train`: the required keys are set; the prompt files parse (evaluation's need for answers is explained, with
the way to turn it off); both model directories hold a config, whole weights and (the student) a tokenizer; the two
configs agree with the method (OPRD-Vanilla needs equal widths; the Bridge methods a bridge file fitted for the pair)
and with `oprd.layers`; the vLLM rollout engine can run the student (or its server
answers); `run.dir` is a directory one
can write in, and a fresh run does not land on another run's outputs (`oprd.runs.run_dir`). `Trainer.run` checks the run
directory again for API users. With `--resume`, at least one checkpoint must pass the cheap file-and-size check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from oprd.bridge import check_bridge_fits, load_bridge
from oprd.cli.model_files import check_model_dir
from oprd.layers import resolve_layers
from oprd.objective.pairing import check_widths, hidden_size
from oprd.objective.spec import BRIDGE_METHODS
from oprd.parallel.processes import check_launch, world_size
from oprd.rollout.prompts import MissingFieldError, load_prompts
from oprd.rollout.vllm_server import served_model
from oprd.runs.checkpoint import latest_checkpoint
from oprd.runs.run_dir import prepare_fresh_run
from oprd.train.config import TrainConfig, parse_layers, resolve_device
from oprd.train.head_transfer import check_head_transfer
from oprd.train.rollout_engines import plan_engine


def check_train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> tuple[list[dict], list[dict]]:
    """Everything about a training run that can be checked without loading a model. Returns the training and
    evaluation prompts (read to check them); evaluation prompts are empty when `data.answer_field` is ""."""
    check_launch("oprd train")
    processes = world_size()  # torchrun's, once check_launch has passed
    if config.rollout.prompts_per_step % processes:
        raise ValueError(f"oprd train: `rollout.prompts_per_step` (the global batch, split across the processes) must "
                         f"be a multiple of the {processes} processes torchrun started; got "
                         f"{config.rollout.prompts_per_step}")
    if resume and overwrite:
        raise ValueError(f"--resume and --overwrite exclude each other: --resume continues the run in "
                         f"{config.run.dir}, --overwrite deletes it")
    for key, value in (("model.student", config.model.student), ("model.teacher", config.model.teacher),
                       ("data.prompts", config.data.prompts)):
        if not value:
            raise ValueError(f"oprd train: `{key}` must be set (in the config file or as {key}=...)")
    prompts, eval_prompts = train_prompts(config)
    check_model_dir(config.model.student, "model.student", tokenizer=True)
    check_model_dir(config.model.teacher, "model.teacher")
    check_pair(config)
    check_run_dir(config.run.dir, resume, overwrite)
    return prompts, eval_prompts


def train_prompts(config: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Training prompts (answers not needed) and evaluation prompts: the first `data.eval_size` of
    `data.eval_prompts`, or of `data.prompts` when that is not set, each with an answer."""
    data = config.data
    prompts = _prompts(data.prompts, data.prompt_field, "", "data.prompts")
    if not data.answer_field:
        return prompts, []
    key = "data.eval_prompts" if data.eval_prompts else "data.prompts"
    eval_prompts = _prompts(data.eval_prompts or data.prompts, data.prompt_field, data.answer_field, key)
    return prompts, eval_prompts[: data.eval_size]


def _prompts(path: str, prompt_field: str, answer_field: str, key: str) -> list[dict]:
    try:
        return load_prompts(path, prompt_field, answer_field)
    except MissingFieldError as exc:
        if exc.kind == "prompt":
            advice = f"set `data.prompt_field` to the field that holds the prompts of `{key}`"
        else:
            source = ("`data.eval_prompts`" if key == "data.eval_prompts" else
                      "`data.prompts`, because `data.eval_prompts` is not set")
            advice = (f"training needs no answers, but evaluation reads its prompts and answers from {source}: "
                      f"point `data.eval_prompts` at a file with answers, set `data.answer_field` to the field that "
                      f"holds them, or turn evaluation off with `data.answer_field=` (empty)")
        raise ValueError(f"{exc}; {advice}") from None


def check_pair(config: TrainConfig) -> None:
    """The two models' configs (no weights): loadable, widths the method can train, `oprd.layers` within the
    student's depth, and for the Bridge methods a bridge file fitted for this pair and these layers."""
    student = model_config(config.model.student, "model.student")
    teacher = model_config(config.model.teacher, "model.teacher")
    methods = [m for m in (config.method.name, config.method.then) if m]
    widths = (_width(student, config.model.student, "model.student"),
              _width(teacher, config.model.teacher, "model.teacher"))
    for method in methods:
        check_widths(method, *widths)
    if config.oprd.head_from_teacher:
        check_head_transfer(student, teacher)
    layers = student_layers(config.oprd.layers, student, config.model.student, "`oprd.layers`", "`model.student`")
    check_rollout_engine(config, student)
    if any(m in BRIDGE_METHODS for m in methods):
        check_bridge_fits(load_bridge(config.bridge.path), student, teacher, layers)


def check_rollout_engine(config: TrainConfig, student_config) -> None:
    """vLLM installed and able to run this student with these settings, or the server at `rollout.vllm_url`
    answering (oprd.train.rollout_engines)."""
    if config.rollout.engine != "vllm":
        return
    if config.rollout.vllm_url:
        served_model(config.rollout.vllm_url)
    else:
        plan_engine(config, student_config, resolve_device(config.run.device))


def student_layers(layers: str, student_config, path: str, layers_name: str, student_name: str) -> list[int] | None:
    """`layers` (as `oprd.layers` writes it) resolved against the student's depth from its config alone, before any
    weights load; None when the config gives no depth (the model checks it once loaded). The error names both."""
    depth = getattr(getattr(student_config, "text_config", None) or student_config, "num_hidden_layers", None)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        return None
    try:
        return resolve_layers(parse_layers(layers), depth)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{layers_name} {layers!r} does not fit {student_name} {path} ({depth} blocks): {exc}") \
            from None


def _width(config, path: str, key: str) -> int:
    try:
        return hidden_size(config)
    except ValueError as exc:
        raise ValueError(f"`{key}` {path}: {exc}") from None


def model_config(path: str, key: str):
    """The Hugging Face config of the model directory `path` (the value of `key`); one error line if it fails."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a user's file: any failure to read it is reported, not raised as a traceback
        raise ValueError(f"`{key}` {path}: config.json does not load as a Hugging Face config "
                         f"({one_line(exc)})") from None


def check_run_dir(path: str, resume: bool = False, overwrite: bool = False, key: str = "run.dir") -> None:
    """`path` is, or can be made, a directory one can write in; a fresh run (neither `resume` nor `overwrite`) must
    not land on another run's outputs. Creates nothing that stays: writing is tested with a probe file."""
    if not path:
        raise ValueError(f"`{key}` is empty; set it to the directory for the run's outputs")
    run_dir = Path(path)
    if run_dir.is_symlink() and not run_dir.exists():
        raise ValueError(f"`{key}` {path} is a broken symbolic link; remove it or choose another {key}")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"`{key}` {path} is a file, not a directory; choose another {key}, or move the file away")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"`{key}` {path} is under {existing}, which is a file, not a directory; choose another "
                         f"{key}")
    _probe(existing, path, key)
    if run_dir.is_dir() and resume:
        _check_resumable(run_dir)
    elif run_dir.is_dir() and not overwrite:
        prepare_fresh_run(run_dir, overwrite=False)  # only checks when not overwriting: RunDirError says what to do


def _check_resumable(run_dir: Path) -> None:
    """With checkpoints present, at least one must pass the cheap check (files and sizes; `Trainer.run` verifies
    the hashes). When none does, the warnings and the error are those `latest_checkpoint` gives after the models
    load; when one does, the broken newer ones are left for that later, hashing check to report."""
    latest_checkpoint(run_dir, hashes=False, warn_skipped=False)


def _probe(directory: Path, path: str, key: str) -> None:
    """Write permission as the file system sees it (os.access can be wrong on network file systems and for root)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".oprd-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if directory == Path(path) else f" (in {directory}, where it would be created)"
        raise ValueError(f"`{key}` {path}: cannot write there{where}: {exc.strerror or exc}; choose a {key} you "
                         "can write in, or fix its permissions") from None


def check_eval(model: str, prompts: str, prompt_field: str, answer_field: str) -> list[dict]:
    """`oprd eval`'s inputs: the model directory with its tokenizer, and prompts that all have answers."""
    check_model_dir(model, "--model", tokenizer=True)
    try:
        return load_prompts(prompts, prompt_field, answer_field)
    except MissingFieldError as exc:
        flag = "--prompt-field" if exc.kind == "prompt" else "--answer-field"
        raise ValueError(f"{exc}; name the file's {exc.kind} field with {flag}") from None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
