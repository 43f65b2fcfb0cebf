"""The `oprd` command: the quick demo end to end, and clear errors before any work for bad input."""

from __future__ import annotations

import contextlib
import json

import pytest

from oprd.cli.commands import main
from oprd.runs.checkpoint import CheckpointWarning
from oprd.tasks import ArithmeticTask


def test_quick_demo_writes_tables_plots_and_results(tmp_path, capfd):  # fd-level: kineto writes past sys.stderr
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"oprd", "opd_top1", "opd_topk", "opd_full", "oprd+opd", "oprd (teacher head)"}
    for method in results["methods"].values():
        assert 0.0 <= method["accuracy"] <= 1.0 and method["seconds"] > 0 and method["update_delta_peak_mb"] > 0
        assert method["seeds"] == [0, 1] and [run["seed"] for run in method["runs"]] == [0, 1]
        accuracies = [run["accuracy"] for run in method["runs"]]
        assert method["accuracy"] == pytest.approx(sum(accuracies) / 2)
        assert method["accuracy_spread"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2)
        for run in method["runs"]:
            assert run["accuracy_curve"][0][0] == 0 and len(run["accuracy_curve"]) >= 2 and run["cosine_curve"]
        assert method["cosine_per_layer"]
        assert 0.0 <= method["accuracy_teacher_head"] <= 1.0 and method["head_distance"] >= 0.0
    # started from the teacher's head: at distance 0 from it before training (OPRD never moves an untied head)
    assert results["methods"]["oprd (teacher head)"]["head_distance"] == pytest.approx(0.0, abs=1e-6)
    assert results["student_head_distance"] > 0.0
    tables = (out / "tables.md").read_text()
    assert "Table 2" in tables and "Table 3" in tables and "| oprd+opd |" in tables and "teacher's head" in tables
    assert "paper AIME24" in tables and "| oprd (teacher head) |" in tables and " ± " in tables
    for name in ("accuracy.png", "cosine_similarity.png", "diagnostics.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for directory in ("models/teacher", "models/student", "runs/oprd/seed1/final", "runs/oprd_teacher_head/seed0/final",
                      "tokenizer"):
        assert (out / directory).is_dir()
    choice = results["student_choice"]
    assert choice["ratio"] == 0.65 and choice["step"] % results["settings"]["candidate_every"] == 0
    assert [step for step, _ in choice["candidates"]] == sorted(step for step, _ in choice["candidates"])
    assert [choice["step"], choice["accuracy"]] in choice["candidates"]
    if choice["reached"]:  # the nearer of the first reaching the target and the last below it
        target = 0.65 * choice["teacher_accuracy"]
        first = min((c for c in choice["candidates"] if c[1] >= target), key=lambda c: c[0])
        assert choice["step"] <= first[0] and abs(choice["accuracy"] - target) <= first[1] - target
    out_text = capfd.readouterr()
    assert "Table 2" in out_text.out and "student: SFT step" in out_text.out
    assert "USDT" not in out_text.out + out_text.err


def test_the_demo_refuses_a_student_ratio_outside_0_1(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--student-ratio", "1.5"]) == 2
    assert "--student-ratio must be in (0, 1]" in capsys.readouterr().err


@pytest.fixture
def prompt_file(tmp_path):
    import random

    path = tmp_path / "prompts.jsonl"
    task = ArithmeticTask(2)
    from oprd.tasks import write_jsonl

    write_jsonl(path, task.sample(8, random.Random(0)))
    return path


def test_train_reports_bad_config_before_any_work(tmp_path, capsys, prompt_file):
    assert main(["train", "rollout.top_p=1.5"]) == 2
    assert "`rollout.top_p` must be in (0, 1]" in capsys.readouterr().err
    assert main(["train", "optim.lrr=1e-3"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert main(["train", f"data.prompts={prompt_file}", "model.teacher=x"]) == 2
    assert "`model.student` must be set" in capsys.readouterr().err


def test_train_reports_a_missing_model_directory(tmp_path, capsys, prompt_file):
    missing = tmp_path / "nope"
    assert main(["train", f"model.student={missing}", f"model.teacher={missing}", f"data.prompts={prompt_file}",
                 f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "model.student" in err and "not a local Hugging Face model directory" in err
    assert not (tmp_path / "run").exists()


def test_train_reports_a_prompt_file_without_the_fields(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1="}\n')
    assert main(["train", f"data.prompts={bad}", "model.student=a", "model.teacher=b"]) == 2
    assert "has no field 'prompt'" in capsys.readouterr().err
    assert main(["train", f"data.prompts={tmp_path / 'absent.jsonl'}", "model.student=a", "model.teacher=b"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_and_eval_on_local_model_directories(tiny, tmp_path, capsys, prompt_file):
    """`oprd train` on HF model directories (saved with their tokenizer, as the demo saves its models), then
    `oprd eval` of the result: the user-facing path. (The demo's own models are checked by the demo's test; running
    the demo again here cost 35 s of CI.)"""
    run = tmp_path / "run"
    assert main(["train", f"model.student={tiny / 'student'}", f"model.teacher={tiny / 'teacher'}",
                 f"data.prompts={prompt_file}", f"run.dir={run}", "optim.steps=2", "rollout.prompts_per_step=2",
                 "rollout.max_new_tokens=8", "eval.samples=1", "eval.max_new_tokens=8", "data.eval_size=2",
                 "run.device=cpu"]) == 0
    assert (run / "final" / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "final"), "--prompts", str(prompt_file), "--samples", "1",
                 "--max-new-tokens", "25", "--size", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["eval/accuracy"] <= 1.0


# --- a user's mistake: one error line, exit status 2, before any model loads ----------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny model directories and prompt files, and the broken copies the mistakes below point at."""
    import shutil

    from tiny_hf import save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    save_tiny_model(root / "student")
    teacher = save_tiny_model(root / "teacher", tokenizer=False)
    save_tiny_model(root / "wide", hidden=48, tokenizer=False)
    shutil.copytree(teacher, root / "no_weights")
    (root / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(root / "student", root / "bad_tokenizer")
    (root / "bad_tokenizer" / "tokenizer.json").write_text("{not json")
    shutil.copytree(teacher, root / "truncated")
    data = (teacher / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    (root / "prompts.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+3=", "answer": "5"}\n')
    (root / "bare.jsonl").write_text('{"prompt": "1+1="}\n{"prompt": "2+3="}\n')
    (root / "null.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": null, "answer": "5"}\n')
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "5"}\n')
    (root / "a_file").write_text("not a directory")
    (root / "bad.yaml").write_text("model: [\n")
    (root / "latin1.yaml").write_bytes(b'run: {dir: "caf\xe9"}\n')
    (root / "old_run").mkdir()
    (root / "old_run" / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "broken_run" / "checkpoints" / "step_00000003").mkdir(parents=True)
    return root


def train_args(tiny, tmp_path, *overrides, flags=()):
    return ["train", *flags, f"model.student={tiny / 'student'}", f"model.teacher={tiny / 'teacher'}",
            f"data.prompts={tiny / 'prompts.jsonl'}", f"run.dir={tmp_path / 'run'}", "run.device=cpu", *overrides]


MISTAKES = {  # name: (arguments after the valid ones, fragments the one error line must hold)
    "run.dir is a file": (["run.dir={tiny}/a_file"], ["`run.dir`", "a_file is a file", "choose another run.dir"]),
    "run.dir under a file": (["run.dir={tiny}/a_file/run"], ["`run.dir`", "is under", "a_file, which is a file"]),
    "no weights": (["model.teacher={tiny}/no_weights"],
                   ["`model.teacher`", "no_weights", "has no weights (looked for model.safetensors,"]),
    "no tokenizer": (["model.student={tiny}/teacher"], ["`model.student`", "has no tokenizer (looked for tokenizer"]),
    "tokenizer does not parse": (["model.student={tiny}/bad_tokenizer"],
                                 ["`model.student`", "bad_tokenizer: the tokenizer does not load ("]),
    "truncated weights": (["model.teacher={tiny}/truncated"],
                          ["`model.teacher`", "truncated/model.safetensors is truncated", "copy the weights again"]),
    "prompts not UTF-8": (["data.prompts={tiny}/latin1.jsonl"], ["latin1.jsonl:2 is not UTF-8 text"]),
    "null prompt": (["data.prompts={tiny}/null.jsonl"], ["null.jsonl:2: field 'prompt' must be a string; got null"]),
    "prompts without answers": (["data.prompts={tiny}/bare.jsonl"],
                                ["bare.jsonl:1 has no field 'answer'", "`data.answer_field=` (empty)"]),
    "prompt file is a directory": (["data.prompts={tiny}"], ["is a directory; give the path of a JSONL prompt file"]),
    "teacher of another width": (["model.teacher={tiny}/wide"],
                                 ["`model.teacher` has hidden size 48 and `model.student` 32", "Bridge"]),
    "layers beyond the depth": (["oprd.layers=1,7"], ["`oprd.layers` '1,7' does not fit `model.student`"]),
    "a fresh run over another run": (["run.dir={tiny}/old_run"], ["already holds a run", "--resume", "--overwrite"]),
    "resume without an intact checkpoint": (["run.dir={tiny}/broken_run", "--resume"],  # warns as well
                                            ["no intact checkpoint to resume from", "step_00000003"]),
    "config not valid YAML": (["--config", "{tiny}/bad.yaml"], ["bad.yaml: not valid YAML"]),
    "config not UTF-8": (["--config", "{tiny}/latin1.yaml"], ["latin1.yaml:1 is not UTF-8 text"]),
    "config is a directory": (["--config", "{tiny}"], ["is a directory; give the path of a YAML config file"]),
    "--resume with --overwrite": (["--resume", "--overwrite"], ["--resume and --overwrite exclude each other"]),
    "config file missing": (["--config", "{tiny}/absent.yaml"], ["no such config file", "absent.yaml"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_train_reports_each_mistake_in_one_line_before_any_model_loads(tiny, tmp_path, capsys, monkeypatch, mistake):
    import oprd.cli.commands

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(oprd.cli.commands, "_load_model", no_loading)
    extra, fragments = MISTAKES[mistake]
    extra = [arg.format(tiny=tiny) for arg in extra]
    flags = [a for i, a in enumerate(extra) if a.startswith("--") or (i and extra[i - 1] == "--config")]
    with pytest.warns(CheckpointWarning) if "checkpoint" in mistake else contextlib.nullcontext():
        assert main(train_args(tiny, tmp_path, *[a for a in extra if a not in flags], flags=flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "run").exists()


def test_eval_reports_mistakes_in_one_line(tiny, capsys):
    assert main(["eval", "--model", str(tiny / "teacher"), "--prompts", str(tiny / "prompts.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--model`" in err and "has no tokenizer" in err
    assert main(["eval", "--model", str(tiny / "student"), "--prompts", str(tiny / "bare.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bare.jsonl:1 has no field 'answer'" in err and "--answer-field" in err


def test_eval_chat_template_flag_reaches_evaluation(tiny, capsys, monkeypatch):
    import oprd.train.evaluate

    seen = {}

    def fake_evaluate(model, tokenizer, examples, **kwargs):
        seen.update(kwargs)
        return {"eval/accuracy": 0.0}

    monkeypatch.setattr(oprd.train.evaluate, "evaluate", fake_evaluate)
    args = ["eval", "--model", str(tiny / "student"), "--prompts", str(tiny / "prompts.jsonl")]
    assert main([*args, "--chat-template", "off"]) == 0 and seen["chat_template"] == "off"
    capsys.readouterr()
    assert main([*args, "--chat-template", "on"]) == 2  # the tiny tokenizer has no template
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: oprd eval: `--chat-template` is 'on' but the tokenizer")
    with pytest.raises(SystemExit) as info:
        main([*args, "--chat-template", "bogus"])
    assert info.value.code == 2 and "argument --chat-template: invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "m", "--prompts", "p", "--samples", "0"], "argument --samples: must be an int >= 1; got '0'"),
    (["eval", "--model", "m", "--prompts", "p", "--size", "0"], "argument --size: must be an int >= 1; got '0'"),
    (["eval", "--model", "m", "--prompts", "p", "--size", "ten"], "argument --size: must be an int >= 1; got 'ten'"),
    (["eval", "--model", "m", "--prompts", "p", "--temperature", "0"], "argument --temperature: must be a finite"),
    (["eval", "--model", "m", "--prompts", "p", "--answer-field", ""], "argument --answer-field: must name a JSON"),
])
def test_bad_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_weights_that_fail_only_when_loading_are_one_error_line(tiny, tmp_path, capsys):
    """A header the preflight reads as whole but safetensors refuses (an unknown dtype): still no traceback."""
    import shutil

    teacher = shutil.copytree(tiny / "teacher", tmp_path / "teacher")
    data = (teacher / "model.safetensors").read_bytes()
    assert b'"F32"' in data
    (teacher / "model.safetensors").write_bytes(data.replace(b'"F32"', b'"Q32"'))
    assert main(train_args(tiny, tmp_path, f"model.teacher={teacher}")) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the student's loading bar
    assert last.startswith("error: `model.teacher`") and "the model does not load" in last and "Q32" in last


def test_prompts_without_answers_train_with_evaluation_off(tiny, tmp_path, capsys):
    assert main(train_args(tiny, tmp_path, f"data.prompts={tiny / 'bare.jsonl'}", "data.answer_field=",
                           "optim.steps=1", "rollout.prompts_per_step=2", "rollout.max_new_tokens=4")) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] and not any("eval/accuracy" in row for row in rows)
