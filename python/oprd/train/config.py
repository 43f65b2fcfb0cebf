"""The trainer's configuration: one dataclass tree, set from a YAML file and `section.key=value` overrides, and
checked whole before any work starts (what each value may be: `config_values`).

Every error names the dotted key, the value seen and what is expected. Defaults follow the paper's training setup
(PAPER_NOTES §2, §4) at a size one machine can run: AdamW at lr 1e-5 with 3% warm-up, 8 prompts x 2 responses per
step at temperature 1.0, plain MSE/d on all layers over the last k = 2000 response tokens, eval at temperature 0.7.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from oprd.objective.spec import BRIDGE_METHODS
from oprd.train.config_values import (
    DTYPES,
    KERNEL_BACKENDS,
    LOSS_TYPES,
    ON_OFF_KEYS,
    PARALLEL_STRATEGIES,
    ROLLOUT_ENGINES,
    TEACHER_PLACEMENTS,
    Dumper,
    Loader,
    check_value,
    coerce,
    expected,
    parse_layers,
    resolve_device,
    resolve_dtype,
    show,
)

__all__ = [  # the config's API; the value rules' names are handed on as oprd 0.1's oprd.config had them
    "BridgeConfig", "DataConfig", "EvalConfig", "MethodConfig", "ModelConfig", "OprdConfig", "OptimConfig",
    "ParallelConfig", "RolloutConfig", "RunConfig", "TrainConfig", "config_to_dict", "load_config", "save_config",
    "validate", "DTYPES", "KERNEL_BACKENDS", "LOSS_TYPES", "PARALLEL_STRATEGIES", "TEACHER_PLACEMENTS",
    "parse_layers", "resolve_device", "resolve_dtype", "ROLLOUT_ENGINES",
]


@dataclass
class ModelConfig:
    student: str = ""            # local HF model directory (required for `oprd train`)
    teacher: str = ""            # local HF model directory (required for `oprd train`)
    dtype: str = "auto"          # "auto" (bf16 on CUDA, float32 on CPU) | "float32" | "bfloat16"


@dataclass
class DataConfig:
    prompts: str = ""            # JSONL prompt file (required for `oprd train`)
    prompt_field: str = "prompt"
    answer_field: str = "answer"  # "" means: no graded evaluation
    eval_prompts: str = ""       # JSONL; "" = use `prompts`
    eval_size: int = 64          # number of evaluation prompts (the first N), >= 1
    chat_template: str = "auto"  # "auto" (the tokenizer's chat template when it has one) | "on" (required) | "off"


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8    # >= 1
    responses_per_prompt: int = 2  # >= 1
    max_new_tokens: int = 256    # >= 1
    temperature: float = 1.0     # > 0
    top_p: float = 1.0           # 0 < top_p <= 1
    engine: str = "hf"           # "hf" (HF generate on the student) | "vllm" (docs/trainer.md, "vLLM rollouts")
    vllm_url: str = ""           # "": vLLM in this process; else an OpenAI-compatible vLLM server's base URL
    vllm_dtype: str = "auto"     # "auto" (bf16 on CUDA, float32 on CPU) | "float32" | "bfloat16"
    vllm_max_model_len: int = 0  # >= 0: prompt + response tokens; 0 = the model's limit, capped by the KV cache
    vllm_kv_cache_mb: int = 1024  # >= 0: the KV cache's memory; 0 on CUDA = what the memory fraction leaves
    vllm_gpu_memory_utilization: float = 0.3  # in (0, 1]: the GPU share vLLM may take (CUDA only)


@dataclass
class MethodConfig:
    name: str = "oprd"           # "oprd" | "opd_top1" | "opd_topk" | "opd_full" | "oprd+opd" | "oprd_bridge"
    #                              | "oprd_bridge+opd"
    topk: int = 16               # >= 1 (opd_topk)
    mu: float = 1.0              # weight of L_OPRD in "oprd+opd" (of L_Bridge in "oprd_bridge+opd"), >= 0
    opd_variant: str = "opd_top1"  # the OPD term of "oprd+opd": "opd_top1" (the paper's) | "opd_topk" | "opd_full"
    opd_impl: str = "fused"      # "fused" (no [N, |V|] logits) | "naive" (the reference code's materialised logits)
    logit_metrics: bool = True   # OPD methods log reward, entropies and top-k overlap (extra no-grad head passes)
    then: str = ""               # "" or a method the run switches to after `switch_step` steps (e.g. Bridge, then
    switch_step: int = 0         #   opd_top1: the paper's best Table 4 row); >= 1 and < optim.steps when `then` is set


@dataclass
class OprdConfig:
    loss_type: str = "mse"       # "mse" | "nmse" | "cosine"
    layers: str = "all"          # "last" | "all" | "even" | "odd" | comma-separated ints, e.g. "1,4,-1"
    positions: str = "last_k"    # "all" | "last" | "last_k" | "first_k"
    k: int = 2000                # >= 1, used by last_k / first_k
    weighting: str = "token"     # "token" | "sample"
    coefficient: float = 1.0     # > 0, multiplies L_OPRD in method "oprd"
    gradient_injection: bool = False
    head_from_teacher: bool = False  # start the student from the teacher's LM head and final norm (head_transfer)


@dataclass
class BridgeConfig:
    path: str = ""               # bridge.safetensors from `oprd bridge fit`; required by the oprd_bridge methods
    coefficient: float = 10.0    # > 0, multiplies L_Bridge in method "oprd_bridge" (the reference code's 10)


@dataclass
class OptimConfig:
    lr: float = 1e-5             # > 0
    weight_decay: float = 0.0    # >= 0
    betas: tuple[float, float] = (0.9, 0.999)  # each in [0, 1); YAML gives a list of 2 numbers
    warmup_ratio: float = 0.03   # 0 <= x < 1
    steps: int = 500             # >= 1
    grad_clip: float = 1.0       # > 0, or 0 to disable
    grad_accum: int = 1          # >= 1
    param_dtype: str = "fp32"    # the student's weights and gradients: "fp32" | "bf16" (oprd.train.optim)
    optimizer: str = "adamw"     # "adamw" (fp32 moments) | "adamw_8bit" (torchao, 8-bit moments)
    gradient_checkpointing: str = "auto"  # "auto" (on for students of >= 1B parameters) | "on" | "off"


@dataclass
class EvalConfig:
    every: int = 0               # evaluate every N steps (0: only at the end), >= 0
    samples: int = 4             # avg@k: responses per eval prompt, >= 1
    temperature: float = 0.7     # > 0
    max_new_tokens: int = 256    # >= 1


@dataclass
class RunConfig:
    dir: str = "runs/oprd"       # run directory
    seed: int = 0
    save_every: int = 0          # checkpoint every N steps (0: only at the end), >= 0
    keep_checkpoints: int = 2    # how many checkpoints are kept (the newest ones), >= 1
    device: str = "auto"         # "auto" | "cpu" | "cuda" | "cuda:N"
    backend: str = "auto"        # kernel backend: "auto" | "reference" | "triton" | "cpu"
    log_every: int = 1           # >= 1


@dataclass
class ParallelConfig:             # several processes (torchrun); no effect in one process
    strategy: str = "fsdp2"      # the student: "fsdp2" (sharded per decoder block) | "ddp" (replicated)
    teacher: str = "replicate"   # the frozen teacher under fsdp2: "replicate" (whole on every rank) | "shard"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    oprd: OprdConfig = field(default_factory=OprdConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}
_HINTS = {name: get_type_hints(cls) for name, cls in _SECTIONS.items()}  # section -> key -> annotation


def _suggest(name: Any, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), options, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _check_section(section: Any, where: str) -> None:
    if section not in _SECTIONS:
        raise ValueError(f"{where}: unknown section `{section}`{_suggest(section, list(_SECTIONS))}; expected one "
                         f"of {list(_SECTIONS)}")


def _hint(section: Any, key: Any, value: Any, where: str) -> Any:
    _check_section(section, where)
    keys = _HINTS[section]
    if key not in keys:
        raise ValueError(f"{where}: unknown key `{section}.{key}` (value {show(value)}){_suggest(key, list(keys))}; "
                         f"`{section}` has keys {list(keys)}")
    return keys[key]


def _set(config: TrainConfig, section: str, key: str, value: Any, where: str) -> None:
    hint = _hint(section, key, value, where)
    if f"{section}.{key}" in ON_OFF_KEYS and isinstance(value, bool):
        value = "on" if value else "off"
    setattr(getattr(config, section), key, coerce(value, hint))


def _read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such config file: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: the top level must be a mapping of sections {list(_SECTIONS)}; got "
                         f"{show(data)} ({type(data).__name__})")
    return data


def _parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); the value is read as YAML, but a string field keeps the raw
    text when YAML would make it something else (`run.dir=2024` is the string "2024")."""
    where = f"config override {text!r}"
    name, sep, raw = text.partition("=")
    parts = name.strip().split(".")
    if not sep or len(parts) != 2:
        raise ValueError(f"{where}: expected `section.key=value`, e.g. `optim.lr=3e-4`")
    section, key = parts
    raw = raw.strip()
    try:
        value = yaml.load(raw, Loader=Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: the value is not valid YAML: {err}") from None
    if _hint(section, key, value, where) is str and not isinstance(value, str):
        value = raw
    return section, key, value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (a mapping of sections to mappings of keys), then `overrides`
    (`section.key=value`, value read as YAML), then `validate`. Unknown sections or keys are errors."""
    if isinstance(overrides, str):
        raise TypeError(f"load_config: `overrides` must be a sequence of `section.key=value` strings, not one "
                        f"string; got {overrides!r}")
    config = TrainConfig()
    if path is not None:
        where = f"config file {os.fspath(path)}"
        for section, values in _read_yaml(path).items():
            _check_section(section, where)
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ValueError(f"{where}: section `{section}` must be a mapping of keys to values; got "
                                 f"{show(values)} ({type(values).__name__})")
            for key, value in values.items():
                _set(config, section, key, value, where)
    for text in overrides:
        _set(config, *_parse_override(text), f"config override {text!r}")
    return validate(config)


def validate(config: TrainConfig) -> TrainConfig:
    """Check every value's type, range and choice; return `config` unchanged, or raise TypeError / ValueError
    naming the dotted key, the value and what is expected."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig; got {type(config).__name__}")
    for section, cls in _SECTIONS.items():
        part = getattr(config, section)
        if not isinstance(part, cls):
            raise TypeError(expected(section, f"a {cls.__name__}", part, with_type=True))
        for key, hint in _HINTS[section].items():
            check_value(f"{section}.{key}", getattr(part, key), hint)
    _check_together(config)
    return config


def _check_together(config: TrainConfig) -> None:
    """Rules that read more than one key."""
    m = config.method
    for key, method in (("method.name", m.name), ("method.then", m.then)):
        if method in BRIDGE_METHODS and not config.bridge.path:
            raise ValueError(f"config: `bridge.path` must name a bridge file (from `oprd bridge fit`) for method "
                             f"{method!r} (`{key}`); got ''")
    if m.then and not 1 <= m.switch_step < config.optim.steps:
        raise ValueError(f"config: `method.switch_step` must be in [1, optim.steps - 1] = [1, {config.optim.steps - 1}]"
                         f" when `method.then` is set ({m.then!r}): the steps of {m.name!r} before the switch; got "
                         f"{m.switch_step}")
    if config.rollout.vllm_url and config.rollout.engine != "vllm":
        raise ValueError(f"config: `rollout.vllm_url` ({config.rollout.vllm_url!r}) is read only by "
                         f"rollout.engine=vllm; got rollout.engine={config.rollout.engine!r}")
    if m.then == m.name:
        raise ValueError(f"config: `method.then` must differ from `method.name` ({m.name!r}); leave it '' for one "
                         f"method")


def config_to_dict(config: TrainConfig) -> dict:
    """Plain nested dict {section: {key: value}}, tuples as lists (what the YAML file holds)."""
    return {section: {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
            for section, values in dataclasses.asdict(config).items()}


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Validate `config` and write it as YAML that `load_config` reads back to an equal config (atomic replace)."""
    validate(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.dump(config_to_dict(config), Dumper=Dumper, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
