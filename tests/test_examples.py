"""The examples run and do what they say."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_and_check_the_student_changed(monkeypatch, name: str) -> dict:
    """The example's main() result, after checking its optimizer step changed the student (its first model)."""
    module = load(name)
    before = module.tiny_llama(layers=3, seed=0).state_dict()
    built = []
    original = module.tiny_llama
    monkeypatch.setattr(module, "tiny_llama", lambda layers, seed: built.append(original(layers, seed)) or built[-1])
    result = module.main()
    after = built[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the optimizer step changed no student weight"
    return result


@pytest.mark.filterwarnings("ignore:oprd_kernels. backend")
def test_custom_training_loop_updates_the_student(monkeypatch):
    result = run_and_check_the_student_changed(monkeypatch, "custom_training_loop")
    assert result["rows"] == 10  # last_k=5 of responses with 6 and 8 tokens
    assert math.isfinite(result["loss"]) and 0 < result["loss"] < 4 / 48  # nmse per row is at most 4 / D
    assert -1 <= result["rep/cosine_similarity"] <= 1


@pytest.mark.filterwarnings("ignore:oprd_kernels. backend")
def test_compiled_training_loop_updates_the_student_with_the_eager_loss(monkeypatch):
    torch._dynamo.reset()
    result = run_and_check_the_student_changed(monkeypatch, "compiled_training_loop")
    assert math.isfinite(result["loss"]) and result["loss"] == pytest.approx(result["eager_loss"], rel=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_the_trl_example_trains_and_lowers_the_oprd_loss(tmp_path, capsys):
    pytest.importorskip("trl", minversion="1.16")
    logged = load("trl_oprd").main(["--steps", "6", "--out", str(tmp_path / "run")])
    assert [h["step"] for h in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[-1]["loss/oprd"] < logged[0]["loss/oprd"]
    assert "step 6: loss/oprd" in capsys.readouterr().out
