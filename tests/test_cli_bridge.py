"""`oprd bridge collect|fit` on tiny local models: the stages run from the command line, and a user's mistake is one
error line, never a traceback."""

from __future__ import annotations

import json

import pytest
from tiny_hf import save_tiny_model

from oprd.cli import main


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
