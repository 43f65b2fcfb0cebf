"""`rollout.vllm_url`: rollouts from a real vLLM server that this test starts on loopback (the CPU build), weights
synced through a file: the layout equals HF `generate`'s, a sync takes effect, and `oprd train` runs against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from vllm_models import TOKENIZER, prompt_texts, vllm_model, write_run_inputs

from oprd.rollout.engine import Sampling
from oprd.rollout.hf import HFEngine
from oprd.rollout.vllm_server import ServerError, VLLMServerEngine, call

LAYOUT = ("input_ids", "attention_mask", "response_mask", "prompt_index")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, inputs folder): vLLM's OpenAI server on the student's directory, with the weight-sync routes."""
    inputs = write_run_inputs(tmp_path_factory.mktemp("inputs"))
    port = free_port()
    log = open(inputs / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(inputs / "student"),
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
         "--kv-cache-memory-bytes", str(16 << 20), "--enforce-eager"],
        env={**os.environ, "VLLM_SERVER_DEV_MODE": "1", "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            call(url, "/v1/models", timeout=2)
            break
        except ServerError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the vLLM server did not start: {(inputs / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url, inputs
    process.terminate()
    process.wait(timeout=60)
    log.close()


def test_server_rollouts_equal_hf_generate_and_follow_a_sync(server, tmp_path):
    url, _ = server
    model = vllm_model(4)  # not the weights the server loaded
    engine = VLLMServerEngine(url, TOKENIZER, [TOKENIZER.eos_token_id], model.config, tmp_path / "sync")
    prompts = prompt_texts(4)
    sampling = Sampling(2, 16, 0.0)
    wanted = HFEngine(model, TOKENIZER).generate(prompts, sampling)
    before = engine.generate(prompts, sampling)
    assert not all(torch.equal(getattr(before, k), getattr(wanted, k)) for k in LAYOUT)
    assert engine.sync(model.state_dict()) > 0
    after = engine.generate(prompts, sampling)
    assert all(torch.equal(getattr(after, k), getattr(wanted, k)) for k in LAYOUT)
    sampled = engine.generate(prompts, Sampling(2, 16, 1.0, seed=2))
    assert torch.equal(sampled.input_ids, engine.generate(prompts, Sampling(2, 16, 1.0, seed=2)).input_ids)


def test_oprd_train_against_the_server(server, tmp_path):
    url, inputs = server
    run = tmp_path / "run"
    args = [sys.executable, "-m", "oprd.cli", "train", f"model.student={inputs / 'student'}",
            f"model.teacher={inputs / 'teacher'}", f"data.prompts={inputs / 'prompts.jsonl'}", f"run.dir={run}",
            "optim.steps=2", "rollout.prompts_per_step=4", "rollout.max_new_tokens=12", "eval.max_new_tokens=8",
            "eval.samples=1", "data.eval_size=4", "optim.lr=1e-3", "rollout.engine=vllm", f"rollout.vllm_url={url}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout/logprob_gap"] < 1e-4 and r["time/weight_sync_s"] > 0 for r in rows)
    assert (run / "vllm_weights" / "model.safetensors").exists()
