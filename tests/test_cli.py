"""The `oprd` command: the quick demo end to end, and clear errors before any work for bad input."""

from __future__ import annotations

import json

import pytest

from oprd.cli import main
from oprd.tasks import ArithmeticTask


def test_quick_demo_writes_tables_plots_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"oprd", "opd_top1", "opd_topk", "oprd+opd"}
    for method in results["methods"].values():
        assert 0.0 <= method["accuracy"] <= 1.0 and method["seconds"] > 0 and method["update_delta_peak_mb"] > 0
        assert method["accuracy_curve"][0][0] == 0 and len(method["accuracy_curve"]) >= 2
        assert method["cosine_curve"]
    tables = (out / "tables.md").read_text()
    assert "Table 2" in tables and "Table 3" in tables and "| oprd+opd |" in tables
    for name in ("accuracy.png", "cosine_similarity.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for directory in ("models/teacher", "models/student", "runs/oprd/final", "tokenizer"):
        assert (out / directory).is_dir()
    assert "Table 2" in capsys.readouterr().out


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


def test_train_and_eval_on_local_model_directories(tmp_path, capsys, prompt_file):
    """`oprd train` on the demo's own models, then `oprd eval` of the result: the user-facing path."""
    demo = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(demo)]) == 0
    run = tmp_path / "run"
    assert main(["train", f"model.student={demo / 'models/student'}", f"model.teacher={demo / 'models/teacher'}",
                 f"data.prompts={prompt_file}", f"run.dir={run}", "optim.steps=2", "rollout.prompts_per_step=2",
                 "rollout.max_new_tokens=8", "eval.samples=1", "eval.max_new_tokens=8", "data.eval_size=2",
                 "run.device=cpu"]) == 0
    assert (run / "final" / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "final"), "--prompts", str(prompt_file), "--samples", "1",
                 "--max-new-tokens", "25", "--size", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["eval/accuracy"] <= 1.0
