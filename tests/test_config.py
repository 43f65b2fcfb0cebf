"""oprd.train.config: defaults, YAML + overrides, round trip, and one rejected example per class of bad value."""

import dataclasses

import pytest
import torch
import yaml

from oprd.layers import resolve_layers
from oprd.train import config as cfg
from oprd.train.config import (
    TrainConfig,
    config_to_dict,
    load_config,
    parse_layers,
    resolve_device,
    resolve_dtype,
    save_config,
    validate,
)
from oprd.train.config_values import RULES


def write(tmp_path, text, name="train.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid_and_follow_the_paper_setup():
    config = TrainConfig()
    assert validate(config) is config
    assert load_config() == config
    assert (config.optim.lr, config.optim.warmup_ratio, config.optim.steps) == (1e-5, 0.03, 500)
    assert (config.rollout.prompts_per_step, config.rollout.responses_per_prompt) == (8, 2)
    assert (config.oprd.loss_type, config.oprd.layers, config.oprd.positions, config.oprd.k) == ("mse", "all",
                                                                                                "last_k", 2000)
    assert (config.rollout.temperature, config.eval.temperature) == (1.0, 0.7)
    assert config.optim.betas == (0.9, 0.999)


def test_yaml_then_overrides_with_the_field_types(tmp_path):
    path = write(tmp_path, """
model: {student: /models/s, teacher: /models/t}
optim:
  lr: 1e-5            # PyYAML alone reads this as a string
  betas: [0.8, 0.9]
  steps: 20
rollout:
  top_p: 1            # an int where a float is expected
oprd:
  layers: "1,4,-1"
eval:                 # an empty section keeps its defaults
""")
    config = load_config(path, ["optim.lr=3e-4", "rollout.top_p=0.9", "oprd.gradient_injection=true",
                                "optim.betas=[0.9,0.95]", "oprd.layers=2,-1", "run.dir=2024", "data.answer_field=",
                                "rollout.max_new_tokens=64", "optim.steps=7", "optim.steps=8"])
    assert config.model.student == "/models/s" and config.model.teacher == "/models/t"
    assert config.optim.lr == 3e-4 and type(config.optim.lr) is float
    assert config.rollout.top_p == 0.9 and type(config.rollout.top_p) is float
    assert config.oprd.gradient_injection is True
    assert config.optim.betas == (0.9, 0.95) and type(config.optim.betas) is tuple
    assert config.oprd.layers == "2,-1"
    assert config.run.dir == "2024"                  # a string field keeps the raw text of a number
    assert config.data.answer_field == ""
    assert config.rollout.max_new_tokens == 64 and type(config.rollout.max_new_tokens) is int
    assert config.optim.steps == 8                   # the last override wins over earlier ones and the file
    assert config.eval == cfg.EvalConfig()


def test_yaml_values_alone_and_number_spellings(tmp_path):
    path = write(tmp_path, "optim: {lr: 2E-4, weight_decay: 1e1, betas: [0, 0.5]}\nrollout: {top_p: 1}\n"
                           "oprd:\n  layers: 1,4,-1\n")
    config = load_config(path)
    assert config.optim.lr == 2e-4 and type(config.optim.lr) is float
    assert config.optim.weight_decay == 10.0 and type(config.optim.weight_decay) is float
    assert config.optim.betas == (0.0, 0.5) and all(type(b) is float for b in config.optim.betas)
    assert config.rollout.top_p == 1.0 and type(config.rollout.top_p) is float
    assert config.oprd.layers == "1,4,-1"


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == TrainConfig()


def test_save_then_load_round_trip(tmp_path):
    config = TrainConfig()
    config.model.student = "/m/student"
    config.optim.lr = 3e-4
    config.optim.betas = (0.9, 0.95)
    config.oprd.layers = "1,4,-1"
    config.oprd.gradient_injection = True
    config.method.name = "oprd+opd"
    config.run.dir = "1e-5"                           # a string that an unquoted YAML scalar would make a float
    config.data.answer_field = ""
    config.run.device = "cpu"
    path = tmp_path / "sub" / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config
    plain = yaml.safe_load(path.read_text())          # readable by any YAML reader, tuples written as lists
    assert plain == config_to_dict(config)
    assert plain["optim"]["betas"] == [0.9, 0.95]
    assert not list(path.parent.glob("*.tmp"))


def test_config_to_dict_is_plain_and_complete():
    data = config_to_dict(TrainConfig())
    assert list(data) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert data["optim"]["betas"] == [0.9, 0.999] and type(data["optim"]["betas"]) is list
    assert data["oprd"] == dataclasses.asdict(cfg.OprdConfig())


def test_save_rejects_an_invalid_config(tmp_path):
    config = TrainConfig()
    config.optim.steps = 0
    with pytest.raises(ValueError, match="optim.steps"):
        save_config(config, tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()


# (YAML text or None, overrides, exception, fragments the message must contain)
BAD = {
    "unknown section": ("optimizer: {lr: 0.1}\n", [], ValueError, ["`optimizer`", "did you mean `optim`"]),
    "unknown key (yaml)": ("optim: {learning_rate: 0.1}\n", [], ValueError, ["`optim.learning_rate`", "0.1"]),
    "unknown key (override)": (None, ["optim.lrr=1e-4"], ValueError, ["`optim.lrr`", "did you mean `lr`"]),
    "unknown section (override)": (None, ["optimizer.lr=1"], ValueError, ["optimizer.lr=1", "`optimizer`"]),
    "bad method name": (None, ["method.name=opd_top16"], ValueError, ["`method.name`", "'opd_top16'", "opd_topk"]),
    "bad opd impl": (None, ["method.opd_impl=liger"], ValueError, ["`method.opd_impl`", "'liger'", "naive"]),
    "top_p 0": (None, ["rollout.top_p=0"], ValueError, ["`rollout.top_p`", "(0, 1]", "got 0.0"]),
    "top_p 1.5": ("rollout: {top_p: 1.5}\n", [], ValueError, ["`rollout.top_p`", "got 1.5"]),
    "temperature 0": (None, ["rollout.temperature=0"], ValueError, ["`rollout.temperature`", "> 0"]),
    "eval temperature 0": (None, ["eval.temperature=0.0"], ValueError, ["`eval.temperature`"]),
    "negative lr": (None, ["optim.lr=-1e-5"], ValueError, ["`optim.lr`", "-1e-05"]),
    "nan lr": (None, ["optim.lr=.nan"], ValueError, ["`optim.lr`", "finite"]),
    "steps 0": (None, ["optim.steps=0"], ValueError, ["`optim.steps`", ">= 1", "got 0"]),
    "bool for an int": (None, ["optim.steps=true"], TypeError, ["`optim.steps`", "an int", "True"]),
    "float for an int": (None, ["rollout.max_new_tokens=2.5"], TypeError, ["`rollout.max_new_tokens`", "2.5"]),
    "string for a float": (None, ["optim.lr=fast"], TypeError, ["`optim.lr`", "a number", "'fast'"]),
    "int for a bool": (None, ["oprd.gradient_injection=1"], TypeError, ["`oprd.gradient_injection`"]),
    "int for a string (yaml)": ("model: {student: 7}\n", [], TypeError, ["`model.student`", "a string", "7"]),
    "betas of length 3": (None, ["optim.betas=[0.9,0.95,0.99]"], ValueError, ["`optim.betas`", "2 numbers"]),
    "beta of 1": (None, ["optim.betas=[0.9,1.0]"], ValueError, ["`optim.betas`", "[0, 1)"]),
    "betas not a list": (None, ["optim.betas=0.9"], TypeError, ["`optim.betas`", "0.9"]),
    "bad layers spec": (None, ["oprd.layers=1,x"], ValueError, ["`oprd.layers`", "'1,x'"]),
    "positions typo": (None, ["oprd.positions=last-k"], ValueError, ["`oprd.positions`", "'last-k'", "last_k"]),
    "bad loss type": (None, ["oprd.loss_type=l2"], ValueError, ["`oprd.loss_type`", "'l2'"]),
    "bad weighting": (None, ["oprd.weighting=tokens"], ValueError, ["`oprd.weighting`"]),
    "k 0": (None, ["oprd.k=0"], ValueError, ["`oprd.k`"]),
    "coefficient 0": (None, ["oprd.coefficient=0"], ValueError, ["`oprd.coefficient`"]),
    "negative mu": (None, ["method.mu=-1"], ValueError, ["`method.mu`"]),
    "topk 0": (None, ["method.topk=0"], ValueError, ["`method.topk`"]),
    "negative grad_clip": (None, ["optim.grad_clip=-1"], ValueError, ["`optim.grad_clip`", "0 to disable"]),
    "warmup 1": (None, ["optim.warmup_ratio=1"], ValueError, ["`optim.warmup_ratio`", "[0, 1)"]),
    "negative weight decay": (None, ["optim.weight_decay=-0.1"], ValueError, ["`optim.weight_decay`"]),
    "grad_accum 0": (None, ["optim.grad_accum=0"], ValueError, ["`optim.grad_accum`"]),
    "eval_size 0": (None, ["data.eval_size=0"], ValueError, ["`data.eval_size`"]),
    "eval samples 0": (None, ["eval.samples=0"], ValueError, ["`eval.samples`"]),
    "negative eval.every": (None, ["eval.every=-1"], ValueError, ["`eval.every`"]),
    "negative save_every": (None, ["run.save_every=-5"], ValueError, ["`run.save_every`"]),
    "log_every 0": (None, ["run.log_every=0"], ValueError, ["`run.log_every`"]),
    "bad device": (None, ["run.device=gpu"], ValueError, ["`run.device`", "'gpu'", "cuda:N"]),
    "bad backend": (None, ["run.backend=cuda"], ValueError, ["`run.backend`", "triton"]),
    "bad dtype": (None, ["model.dtype=fp16"], ValueError, ["`model.dtype`", "bfloat16"]),
    "non-mapping yaml": ("- lr\n- steps\n", [], ValueError, ["top level must be a mapping", "['lr', 'steps']"]),
    "non-mapping section": ("optim: 3\n", [], ValueError, ["section `optim`", "got 3"]),
    "override without =": (None, ["optim.lr"], ValueError, ["'optim.lr'", "section.key=value"]),
    "override without section": (None, ["lr=1e-4"], ValueError, ["'lr=1e-4'", "section.key=value"]),
    "override too deep": (None, ["optim.betas.0=0.5"], ValueError, ["'optim.betas.0=0.5'"]),
    "override not YAML": (None, ["optim.betas=[0.9,"], ValueError, ["'optim.betas=[0.9,'", "not valid YAML"]),
}


@pytest.mark.parametrize("text, overrides, error, fragments", list(BAD.values()), ids=list(BAD))
def test_invalid_values_are_rejected_naming_the_key(tmp_path, text, overrides, error, fragments):
    path = None if text is None else write(tmp_path, text)
    with pytest.raises(error) as info:
        load_config(path, overrides)
    assert type(info.value) is error
    for fragment in fragments:
        assert fragment in str(info.value)


def test_boundary_values_are_accepted():
    config = load_config(None, ["optim.grad_clip=0", "optim.warmup_ratio=0", "optim.weight_decay=0", "method.mu=0",
                                "rollout.top_p=1", "eval.every=0", "run.save_every=0", "optim.betas=[0,0.99]",
                                "run.device=cuda:1", "run.backend=reference", "run.seed=-3", "oprd.layers=last"])
    assert config.optim.grad_clip == 0.0 and config.method.mu == 0.0 and config.rollout.top_p == 1.0
    assert config.run.device == "cuda:1"           # only the form is checked here; resolve_device checks it exists


def test_the_global_safe_loader_is_left_alone():
    assert yaml.safe_load("lr: 1e-5") == {"lr": "1e-5"}


def test_validate_catches_values_set_in_code():
    config = TrainConfig()
    config.rollout.top_p = 1.5
    with pytest.raises(ValueError, match=r"`rollout\.top_p` must be in \(0, 1\]; got 1.5"):
        validate(config)
    config = TrainConfig()
    config.optim = {"lr": 1e-5}
    with pytest.raises(TypeError, match="`optim` must be a OptimConfig"):
        validate(config)
    with pytest.raises(TypeError, match="TrainConfig"):
        validate(config_to_dict(TrainConfig()))


def test_every_rule_names_a_real_field():
    sections = dataclasses.fields(TrainConfig)
    keys = {f"{s.name}.{f.name}" for s in sections for f in dataclasses.fields(s.default_factory)}
    assert set(RULES) <= keys


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(path)


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "optim: {lr: [1e-5\n", name="broken.yaml")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_config(path)


def test_overrides_must_be_a_sequence_not_one_string():
    with pytest.raises(TypeError, match="overrides"):
        load_config(None, "optim.lr=1e-4")


@pytest.mark.parametrize("spec, expected", [
    ("all", "all"), ("last", "last"), ("even", "even"), ("odd", "odd"),
    ("1,4,-1", [1, 4, -1]), ("7", [7]), (" 2 , 3 ", [2, 3]), ("0,+3", [0, 3]),
])
def test_parse_layers_valid(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["", "1,x", "1,,2", "1,4,", "first", "ALL", "1.5", "1 2"])
def test_parse_layers_invalid(spec):
    with pytest.raises(ValueError, match="`oprd.layers`") as info:
        parse_layers(spec)
    assert repr(spec) in str(info.value)


def test_parse_layers_rejects_non_strings_and_feeds_resolve_layers():
    with pytest.raises(TypeError, match="`oprd.layers`"):
        parse_layers([1, 2])
    assert resolve_layers(parse_layers("1,-1"), 4) == [1, 4]
    assert resolve_layers(parse_layers("even"), 4) == [1, 3]


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="`run.device`.*CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="'cuda:1'.*only 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="`run.device`"):
        resolve_device("gpu")


@pytest.mark.parametrize("name, device, expected", [
    ("auto", "cpu", torch.float32), ("auto", "cuda", torch.bfloat16), ("auto", torch.device("cuda", 1), torch.bfloat16),
    ("float32", "cuda", torch.float32), ("bfloat16", torch.device("cpu"), torch.bfloat16),
])
def test_resolve_dtype(name, device, expected):
    assert resolve_dtype(name, device) == expected


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="`model.dtype`.*'fp16'"):
        resolve_dtype("fp16", "cpu")
