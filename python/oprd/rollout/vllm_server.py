"""Rollouts from a vLLM server (`rollout.vllm_url`), for runs that put generation on other GPUs.

The server must be vLLM's OpenAI-compatible one started with `VLLM_SERVER_DEV_MODE=1` (the weight-sync routes) on
the student's architecture, and must read this machine's files: `sync` writes the student's weights as one
safetensors file into `sync_dir` and asks the server to reload them from there (`/collective_rpc reload_weights`),
then to drop its prefix cache. Rows are requests to `/v1/completions` with the prompt's token ids, each with its
own seed, sent concurrently; the answer's `token_ids` and `token_logprobs` fill the layout."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from safetensors.torch import save_file
from torch import Tensor

from oprd.rollout.batch import Rollouts, rollouts_from_samples
from oprd.rollout.engine import Sampling, row_seed
from oprd.rollout.hf import encode_prompt_tokens

CONCURRENT_REQUESTS = 64


class ServerError(RuntimeError):
    """The vLLM server did not answer, or answered with an error."""


def call(url: str, route: str, body: dict | None = None, timeout: float = 600.0) -> dict:
    """POST `body` as JSON to `url` + `route` (GET when None); the decoded answer, or a ServerError naming both."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + route, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
    except urllib.error.HTTPError as err:
        raise ServerError(f"vLLM server {url}{route}: HTTP {err.code}: {err.read()[:300].decode(errors='replace')}")\
            from None
    except (urllib.error.URLError, OSError) as err:
        raise ServerError(f"vLLM server {url}{route} did not answer: {getattr(err, 'reason', err)}") from None
    return json.loads(text) if text else {}


def served_model(url: str, timeout: float = 10.0) -> str:
    """The name of the model the server at `url` serves; ValueError when it does not answer (preflight's check)."""
    try:
        models = call(url, "/v1/models", timeout=timeout).get("data") or []
    except ServerError as err:
        raise ValueError(f"config: `rollout.vllm_url`: {err}; start the server first (docs/trainer.md, \"vLLM "
                         f"rollouts\") or leave rollout.vllm_url empty for an engine in this process") from None
    if not models:
        raise ValueError(f"config: `rollout.vllm_url` {url} serves no model")
    return models[0]["id"]


class VLLMServerEngine:
    name = "vllm"

    def __init__(self, url: str, tokenizer, eos_token_ids: Sequence[int], model_config, sync_dir: Path) -> None:
        self.url, self.tokenizer, self.eos = url.rstrip("/"), tokenizer, list(eos_token_ids)
        self.vocab, self.sync_dir = int(model_config.vocab_size), Path(sync_dir)
        self.model = served_model(self.url)

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> Rollouts:
        ids, mask, token_lists = encode_prompt_tokens(self.tokenizer, prompts, sampling.chat_template)
        n = sampling.responses_per_prompt
        bodies = [self._body(tokens, sampling, row) for row, tokens in
                  enumerate(t for t in token_lists for _ in range(n))]
        with ThreadPoolExecutor(min(CONCURRENT_REQUESTS, len(bodies))) as pool:
            choices = list(pool.map(lambda body: call(self.url, "/v1/completions", body)["choices"][0], bodies))
        samples = [list(c["token_ids"]) for c in choices]
        log_probs = [list(c["logprobs"]["token_logprobs"]) for c in choices]
        return rollouts_from_samples(ids, mask, samples, n, self.eos, self.tokenizer.pad_token_id, log_probs)

    def _body(self, tokens: list[int], s: Sampling, row: int) -> dict:
        body = {"model": self.model, "prompt": tokens, "max_tokens": s.max_new_tokens, "temperature": s.temperature,
                "top_p": s.top_p if s.temperature > 0 else 1.0, "top_k": 0, "seed": row_seed(s.seed, row),
                "stop_token_ids": self.eos, "logprobs": 0, "return_token_ids": True, "skip_special_tokens": False}
        if s.vocab_limit is not None and s.vocab_limit < self.vocab:
            body["allowed_token_ids"] = list(range(s.vocab_limit))
        return body

    def sync(self, state: Mapping[str, Tensor]) -> float:
        """Write `state` where the server can read it, have it reload the weights and drop its prefix cache."""
        start = time.perf_counter()
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        path = self.sync_dir / "model.safetensors"
        save_file(_unshared(state), str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        call(self.url, "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(self.sync_dir)}})
        call(self.url, "/reset_prefix_cache", {})
        return time.perf_counter() - start

    def close(self) -> None:
        """The server belongs to the user: nothing to free here."""


def _unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` on the CPU with tied tensors copied apart (safetensors refuses two names on one storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        key = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
        seen.add(key)
    return out
