"""Rollouts from vLLM running in the trainer's own process (colocated, as TRL's `vllm_mode="colocate"`).

The engine is built from the student's config alone (`load_format="dummy"`) and served the trainer's weights by
`sync` (the whole state in one `reload_weights` call: a partial sync leaves fused projections half old). Prompts go
in as the token ids `encode_prompts` makes, so both engines see the same tokens, and every row is its own request
with its own seed (`engine.row_seed`): a resumed run's rows get the same seeds. vLLM's checks of its own settings
(`vllm_settings`) run before any model work; the engine also leaves torch's thread count and random state as it
found them (vLLM sets both)."""

from __future__ import annotations

import gc
import os
import tempfile
import time
from typing import Mapping, Sequence

import torch
from torch import Tensor

from oprd.rollout.batch import Rollouts, rollouts_from_samples
from oprd.rollout.engine import Sampling, row_seed
from oprd.rollout.hf import encode_prompt_tokens
from oprd.rollout.vllm_settings import VLLMSettings, import_vllm

_SET_NUM_THREADS = torch.set_num_threads  # vLLM's CPU worker swaps in a no-op; the trainer keeps the real one


class VLLMEngine:
    """vLLM's `LLM` over a model of `model_config`'s architecture; serves whatever `sync` gave it last."""

    name = "vllm"

    def __init__(self, model_config, tokenizer, eos_token_ids: Sequence[int], settings: VLLMSettings) -> None:
        vllm = import_vllm()
        self.tokenizer, self.eos, self.settings = tokenizer, list(eos_token_ids), settings
        self.vocab = int(model_config.vocab_size)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in this process: sync hands tensors over, not files
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="oprd-vllm-") as folder, torch.random.fork_rng(devices=[]):
            model_config.save_pretrained(folder)  # the architecture only: the weights come from `sync`
            self.llm = vllm.LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, generation_config="vllm",
                                seed=0, tensor_parallel_size=1, disable_log_stats=True, **settings.engine_kwargs())
        torch.set_num_threads = _SET_NUM_THREADS  # vLLM drops to 1 thread (unless OMP_NUM_THREADS is set) and
        _SET_NUM_THREADS(threads)  # replaces torch.set_num_threads; in this process nothing binds the threads
        self.sampling_params = vllm.SamplingParams

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> Rollouts:
        ids, mask, token_lists = encode_prompt_tokens(self.tokenizer, prompts, sampling.chat_template)
        self.settings.check_prompt_fits(max(map(len, token_lists)), sampling.max_new_tokens)
        n = sampling.responses_per_prompt
        requests = [{"prompt_token_ids": tokens} for tokens in token_lists for _ in range(n)]
        params = [self._params(sampling, row) for row in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = [list(out.outputs[0].token_ids) for out in outputs]
        log_probs = [[step[token].logprob for step, token in zip(out.outputs[0].logprobs, sample)]
                     for out, sample in zip(outputs, samples)]
        return rollouts_from_samples(ids, mask, samples, n, self.eos, self.tokenizer.pad_token_id, log_probs)

    def _params(self, s: Sampling, row: int):
        limit = {} if s.vocab_limit is None or s.vocab_limit >= self.vocab else \
            {"allowed_token_ids": list(range(s.vocab_limit))}
        return self.sampling_params(n=1, temperature=s.temperature, top_p=s.top_p if s.temperature > 0 else 1.0,
                                    top_k=0, max_tokens=s.max_new_tokens, stop_token_ids=self.eos, logprobs=0,
                                    detokenize=False, seed=row_seed(s.seed, row), **limit)

    def sync(self, state: Mapping[str, Tensor]) -> float:
        """Load the whole `state` into the engine and drop its prefix cache; returns the seconds it took."""
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def close(self) -> None:
        """Shut the engine down now (its model, KV cache and the process group it made), not at interpreter exit,
        when the trainer's own process group may already be gone. One engine per process at a time."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
