"""What each value of the trainer's config may be, and how YAML spells it: the choices and ranges of every key
(`RULES`), the type check behind them (`check_value`), `oprd.layers` syntax (`parse_layers`), `run.device` and
`model.dtype` as torch objects, and the YAML loader and dumper the config file is read and written with.

Every error names the dotted key, the value seen and what is expected. YAML is read with two fixes to PyYAML's YAML
1.1 rules: `1e-5` and `3E4` are floats (PyYAML reads them as strings), and a bare `on` / `off` for an on/off key
(`ON_OFF_KEYS`) is that mode (YAML 1.1 reads the words as booleans).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence, get_args, get_origin

import torch
import yaml

from oprd.layers import LAYER_MODES
from oprd.objective.spec import METHODS, OPD_IMPLS, OPD_VARIANTS
from oprd.positions import POSITION_MODES, WEIGHTINGS
from oprd.rollout.prompt_format import CHAT_TEMPLATE_MODES
from oprd.train.optim import OPTIMIZERS, PARAM_DTYPES
from oprd_kernels import BACKENDS

DTYPES = ("auto", "float32", "bfloat16")
LOSS_TYPES = ("mse", "nmse", "cosine")
KERNEL_BACKENDS = ("auto", *BACKENDS)

PARALLEL_STRATEGIES = ("fsdp2", "ddp")
ROLLOUT_ENGINES = ("hf", "vllm")
TEACHER_PLACEMENTS = ("replicate", "shard")

# String keys with the choices "on" and "off", which YAML 1.1 reads as True and False when written bare
ON_OFF_KEYS = {"data.chat_template", "optim.gradient_checkpointing"}

_LAYERS_EXPECTED = f'one of {list(LAYER_MODES)} or comma-separated ints such as "1,4,-1"'


# --- YAML: SafeLoader/SafeDumper that agree on floats written with an exponent and no dot ---

class Loader(yaml.SafeLoader):
    pass


class Dumper(yaml.SafeDumper):
    pass


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _cls in (Loader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


# --- values and messages ---

def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def expected(key: str, what: str, value: Any, with_type: bool = False) -> str:
    """The message for `key` holding `value` where `what` was expected."""
    kind = f" ({type(value).__name__})" if with_type else ""
    return f"config: `{key}` must be {what}; got {show(value)}{kind}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_layer_spec(value: str) -> bool:
    try:
        parse_layers(value)
    except ValueError:
        return False
    return True


def _choice(options: Sequence[str]):
    return (lambda v: v in options), f"one of {list(options)}"


def _at_least(low: int):
    return (lambda v: v >= low), f">= {low}"


_POSITIVE = (lambda v: v > 0), "> 0"

# Range and choice rules on top of the type each annotation asks for; fields absent here take any value of their type.
RULES = {
    "model.dtype": _choice(DTYPES),
    "data.eval_size": _at_least(1),
    "data.chat_template": _choice(CHAT_TEMPLATE_MODES),
    "rollout.prompts_per_step": _at_least(1),
    "rollout.responses_per_prompt": _at_least(1),
    "rollout.max_new_tokens": _at_least(1),
    "rollout.temperature": _POSITIVE,
    "rollout.top_p": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "rollout.engine": _choice(ROLLOUT_ENGINES),
    "rollout.vllm_url": ((lambda v: v == "" or re.fullmatch(r"https?://[^\s/]+(/\S*)?", v) is not None),
                         '"" or an http(s) URL such as "http://127.0.0.1:8000"'),
    "rollout.vllm_dtype": _choice(DTYPES),
    "rollout.vllm_max_model_len": _at_least(0),
    "rollout.vllm_kv_cache_mb": _at_least(0),
    "rollout.vllm_gpu_memory_utilization": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "method.name": _choice(METHODS),
    "method.topk": _at_least(1),
    "method.mu": _at_least(0),
    "method.opd_variant": _choice(OPD_VARIANTS),
    "method.opd_impl": _choice(OPD_IMPLS),
    "method.then": _choice(("", *METHODS)),
    "method.switch_step": _at_least(0),
    "oprd.loss_type": _choice(LOSS_TYPES),
    "oprd.layers": (_is_layer_spec, _LAYERS_EXPECTED),
    "oprd.positions": _choice(POSITION_MODES),
    "oprd.k": _at_least(1),
    "oprd.weighting": _choice(WEIGHTINGS),
    "oprd.coefficient": _POSITIVE,
    "bridge.coefficient": _POSITIVE,
    "optim.lr": _POSITIVE,
    "optim.weight_decay": _at_least(0),
    "optim.betas": ((lambda v: all(0 <= b < 1 for b in v)), "2 numbers, each in [0, 1)"),
    "optim.warmup_ratio": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "optim.steps": _at_least(1),
    "optim.grad_clip": ((lambda v: v >= 0), "> 0, or 0 to disable"),
    "optim.grad_accum": _at_least(1),
    "eval.every": _at_least(0),
    "eval.samples": _at_least(1),
    "eval.temperature": _POSITIVE,
    "eval.max_new_tokens": _at_least(1),
    "run.save_every": _at_least(0),
    "run.keep_checkpoints": _at_least(1),
    "run.device": ((lambda v: re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v) is not None),
                   '"auto", "cpu", "cuda" or "cuda:N"'),
    "run.backend": _choice(KERNEL_BACKENDS),
    "run.log_every": _at_least(1),
    "optim.param_dtype": _choice(tuple(PARAM_DTYPES)),
    "optim.optimizer": _choice(OPTIMIZERS),
    "optim.gradient_checkpointing": _choice(("auto", "on", "off")),
    "parallel.strategy": _choice(PARALLEL_STRATEGIES),
    "parallel.teacher": _choice(TEACHER_PLACEMENTS),
}


def check_value(key: str, value: Any, hint: Any) -> None:
    """Raise TypeError unless `value` has the type `hint` asks for, ValueError unless it passes `key`'s rule."""
    if get_origin(hint) is tuple:
        size = len(get_args(hint))
        if not isinstance(value, (list, tuple)) or not all(is_number(x) for x in value):
            raise TypeError(expected(key, f"a list of {size} numbers", value, with_type=True))
        if len(value) != size:
            raise ValueError(expected(key, f"a list of {size} numbers", value))
        numbers = list(value)
    elif hint is float:
        if not is_number(value):
            raise TypeError(expected(key, "a number", value, with_type=True))
        numbers = [value]
    else:
        names = {bool: "true or false", int: "an int", str: "a string"}
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise TypeError(expected(key, names[hint], value, with_type=True))
        numbers = []
    if not all(math.isfinite(x) for x in numbers):
        raise ValueError(expected(key, "finite", value))
    rule = RULES.get(key)
    if rule is not None and not rule[0](value):
        raise ValueError(expected(key, rule[1], value))


def coerce(value: Any, hint: Any) -> Any:
    """YAML's spelling to the field's: an int where a float is expected becomes a float, a list a tuple."""
    if hint is float and is_number(value):
        return float(value)
    if get_origin(hint) is tuple and isinstance(value, list):
        return tuple(float(x) if is_number(x) else x for x in value)
    return value


def parse_layers(spec: str) -> str | list[int]:
    """`oprd.layers` as `oprd.layers.resolve_layers` takes it: a mode name stays a string, "1,4,-1" -> [1, 4, -1].
    Only the syntax is checked here; indices are checked against the model's depth later."""
    if not isinstance(spec, str):
        raise TypeError(expected("oprd.layers", "a string, " + _LAYERS_EXPECTED, spec, with_type=True))
    if spec in LAYER_MODES:
        return spec
    parts = [part.strip() for part in spec.split(",")]
    if not all(re.fullmatch(r"[-+]?[0-9]+", part) for part in parts):
        raise ValueError(expected("oprd.layers", _LAYERS_EXPECTED, spec))
    return [int(part) for part in parts]


def resolve_device(name: str) -> torch.device:
    """`run.device` as a torch.device: "auto" is CUDA when available, else CPU. Asking for CUDA that is absent
    (or a `cuda:N` beyond the device count) is an error here, before any model is loaded."""
    check_value("run.device", name, str)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"config: `run.device` is {name!r} but CUDA is not available (torch {torch.__version__}); "
                             f'use "auto" or "cpu"')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"config: `run.device` is {name!r} but only {torch.cuda.device_count()} CUDA device(s) "
                             f"are visible")
    return device


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`model.dtype` as a torch.dtype: "auto" is bfloat16 on CUDA and float32 elsewhere."""
    check_value("model.dtype", name, str)
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
