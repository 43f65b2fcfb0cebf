"""`oprd bridge collect|fit` on tiny local models: the stages run from the command line, and a user's mistake is one
error line, never a traceback."""

from __future__ import annotations

import json

import pytest
from tiny_hf import save_tiny_model

from oprd.cli.commands import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{a}="}) + "\n" for a in range(10)))
    return {"student": save_tiny_model(root / "student", hidden=32, layers=2),
            "teacher": save_tiny_model(root / "teacher", hidden=48, layers=3, tokenizer=False), "prompts": prompts}


def collect_args(pair, out, *extra):
    return ["bridge", "collect", "--student", str(pair["student"]), "--teacher", str(pair["teacher"]), "--prompts",
            str(pair["prompts"]), "--out", str(out), "--max-new-tokens", "6", "--batch", "4", "--max-rows", "24",
            "--rows-per-response", "3", *extra]


def test_collect_writes_shards_and_a_manifest(pair, tmp_path, capsys):
    assert main(collect_args(pair, tmp_path / "rows")) == 0
    manifest = json.loads((tmp_path / "rows" / "manifest.json").read_text())
    assert manifest["rows"] == 24 and manifest["student_layers"] == [1, 2] and manifest["teacher_layers"] == [1, 3]
    assert manifest["student"]["hidden_size"] == 32 and manifest["teacher"]["hidden_size"] == 48
    assert "24 rows of 2 layer pairs" in capsys.readouterr().out


def test_collect_mistakes_are_one_error_line(pair, tmp_path, capsys):
    assert main(collect_args(pair, tmp_path / "rows")) == 0
    capsys.readouterr()
    assert main(collect_args(pair, tmp_path / "rows")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "already holds collected rows" in err
    assert main(collect_args({**pair, "teacher": tmp_path / "none"}, tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `--teacher`") and "Traceback" not in err
    assert main(collect_args(pair, tmp_path / "c", "--layers", "1,7")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --layers '1,7' does not fit --student") and "(2 blocks)" in err
    assert not (tmp_path / "c").exists()  # refused before any work


def test_collect_fit_then_train_with_the_bridge(pair, tmp_path, capsys):
    from oprd.bridge import load_bridge

    assert main(collect_args(pair, tmp_path / "rows")) == 0
    out = tmp_path / "bridge.safetensors"
    assert main(["bridge", "fit", "--rows", str(tmp_path / "rows"), "--out", str(out), "--rank", "2", "--ranks",
                 "1,2", "--epochs", "3", "--lr", "0.01", "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    bridge = load_bridge(out)
    assert (bridge.rank, bridge.student_layers, bridge.teacher_layers, bridge.layer_map) == (2, [1, 2], [1, 3], [0, 1])
    report = json.loads(out.with_suffix(".json").read_text())
    assert [e["rank"] for e in report["rank_sweep"]] == [1, 2] and len(report["pairs"]) == 2
    assert report["collection"]["rows"] == 24 and "student layer 1 <- teacher layer 1: cosine" in printed
    run = tmp_path / "run"
    assert main(["train", f"model.student={pair['student']}", f"model.teacher={pair['teacher']}",
                 f"data.prompts={pair['prompts']}", "data.answer_field=", "method.name=oprd_bridge",
                 f"bridge.path={out}", "optim.steps=2", "rollout.prompts_per_step=2", "rollout.max_new_tokens=6",
                 "oprd.positions=all", f"run.dir={run}"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all("loss/oprd_bridge" in line for line in lines)
    assert all(-1 <= line["rep/bridge_cosine"] <= 1 for line in lines)


def test_fit_mistakes_are_one_error_line(pair, tmp_path, capsys):
    assert main(["bridge", "fit", "--rows", str(tmp_path / "none"), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "b.safetensors").exists()
    assert main(collect_args(pair, tmp_path / "rows")) == 0
    assert main(["bridge", "fit", "--rows", str(tmp_path / "rows"), "--out", str(tmp_path / "b.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(["bridge", "fit", "--rows", str(tmp_path / "rows"), "--out", str(tmp_path / "b.safetensors"),
                 "--rank", "49"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "rank" in err and "Traceback" not in err
