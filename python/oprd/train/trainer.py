"""The minimal on-policy distillation loop (DESIGN.md, "The trainer").

One step: prompts -> student rollouts (the engine of `rollout.engine`: HF `generate`, or vLLM served the student's
weights after every optimizer step; `oprd.train.rollout_engines`) -> one truncated teacher pass -> student pass ->
loss (OPRD, an OPD baseline, or both) -> backward -> gradient clipping -> AdamW -> warm-up + cosine schedule ->
weight sync. Gradient accumulation over micro-batches. On CUDA the student computes under bf16 autocast, over fp32
weights by default (`optim.param_dtype`).

Output: per-step metrics as JSON lines in `<run.dir>/metrics.jsonl`, periodic evaluation, and atomic checkpoints.
A resumed run continues exactly: same prompts, same random stream, same metrics except the timings.

Under torchrun (`oprd.parallel.group`) each of N processes samples rollouts for its 1/N of every step's
`rollout.prompts_per_step` prompts (still the global batch) under its own random stream (seed + rank), the window's
token counts and the gradients are summed over the ranks before clipping, so the step is the one-batch step of all N
shares; rank 0 alone writes metrics (combined over the ranks), checkpoints (with every rank's random state) and the
config. `parallel.strategy` "fsdp2" shards the student per decoder block (`oprd.parallel.sharding`; FSDP2 sums the
gradients in backward), "ddp" keeps a whole replica per rank and sums the gradients once per step. The optimizer step
draws any randomness (torchao's stochastic rounding onto bf16 weights) from a stream seeded by the run's seed and the
step, the same on every rank and apart from the rollouts' stream, so replicas stay equal and a resume stays exact.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from oprd.bridge.token_alignment import teacher_view
from oprd.capture import decoder_parts
from oprd.objective import ObjectiveSpec, TokenCounts
from oprd.parallel.checkpointing import load_run_checkpoint, run_strategy, save_run_checkpoint
from oprd.parallel.group import join
from oprd.parallel.rank_metrics import reduce_metrics
from oprd.parallel.sharding import full_model_state, shard_model
from oprd.rollout import eos_token_ids
from oprd.rollout.engine import Sampling
from oprd.rollout.prompt_format import uses_template
from oprd.rollout.prompts import PromptStream
from oprd.runs import metrics_log
from oprd.runs.run_dir import start_run_dir
from oprd.train.accumulation import accumulate_gradients
from oprd.train.config import TrainConfig, resolve_device, save_config
from oprd.train.evaluate import EvalCounts, Grader, default_grader, evaluation_counts
from oprd.train.head_transfer import copy_head_and_norm
from oprd.train.optim import PARAM_DTYPES, build_optimizer, uses_gradient_checkpointing, warmup_cosine
from oprd.train.phases import objective_spec, phase_at, plan_phases
from oprd.train.rollout_engines import build_engine, logprob_gap, plan_engine, sync_state

__all__ = ["Trainer", "objective_spec", "warmup_cosine"]  # the last two lived here in oprd 0.1


class Trainer:
    """Distils `student` from `teacher` on `prompts` as `config` says."""

    def __init__(self, config: TrainConfig, student: nn.Module, teacher: nn.Module, tokenizer,
                 prompts: Sequence[dict], eval_prompts: Sequence[dict] = (), grader: Grader = default_grader,
                 teacher_tokenizer=None) -> None:
        """teacher_tokenizer: the teacher's, when it is not the student's (OPRD-Bridge across tokenizers): each
        batch's teacher then reads its own tokens of the same text (oprd.bridge.token_alignment)."""
        self.config, self.tokenizer, self.grader = config, tokenizer, grader
        self.teacher_tokenizer = teacher_tokenizer
        for tok in (tokenizer, teacher_tokenizer):  # "on" and a tokenizer without a template: refused before any work
            if tok is not None:
                uses_template(tok, config.data.chat_template, "config", "data.chat_template")
        # refuses copies not launched by torchrun: each would run the job and race on the run directory
        self.group = join(resolve_device(config.run.device))
        self.device = self.group.device
        if config.rollout.prompts_per_step % self.group.size:
            raise ValueError(f"config: `rollout.prompts_per_step` (the global batch) must be a multiple of the "
                             f"{self.group.size} processes; got {config.rollout.prompts_per_step}")
        # refuses an unusable pair, and vLLM settings it cannot run, before any model work
        self.phases = plan_phases(config, student, teacher, self.device,
                                  two_tokenizers=teacher_tokenizer is not None)
        engine_settings = plan_engine(config, student.config, self.device)
        self.sharded = self._strategy == "fsdp2"
        self.student, self.teacher = self._place(student, teacher)
        self.engine = build_engine(config, self.student, tokenizer, eos_token_ids(self.student, tokenizer),
                                   engine_settings, Path(config.run.dir) / "vllm_weights")
        # padded heads (one tokenizer, heads of different row counts): sample only ids the teacher's head has
        self.vocab_limit = teacher.get_output_embeddings().weight.shape[0]
        self.prompts, self.eval_prompts = list(prompts), list(eval_prompts)
        o = config.optim
        self.optimizer = build_optimizer(self.student.parameters(), o.optimizer, lr=o.lr, betas=o.betas,
                                         weight_decay=o.weight_decay, seed=config.run.seed)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(o.steps, o.warmup_ratio))
        self.run_dir = Path(config.run.dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.stream = PromptStream(self.prompts, config.run.seed)
        self.step = 0

    def _place(self, student: nn.Module, teacher: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Both models on this rank's device and equal on every rank; the student in its training dtype, with the
        teacher's head if asked, checkpointed if asked; then sharded under FSDP2 (before any optimizer sees it)."""
        config = self.config
        student = student.to(self.device)
        self.group.broadcast_module(student)  # the replicas start equal whatever each process loaded
        teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.group.broadcast_module(teacher)
        if config.oprd.head_from_teacher:  # before the optimizer and any checkpoint load (which then overrides it)
            copy_head_and_norm(student, teacher)
        student.to(PARAM_DTYPES[config.optim.param_dtype])
        if uses_gradient_checkpointing(config.optim.gradient_checkpointing, student):
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.sharded:  # after every whole-model step above
            shard_model(student, decoder_parts(student).layers, trainable=True)
            if config.parallel.teacher == "shard":
                shard_model(teacher, decoder_parts(teacher).layers, trainable=False)
        return student, teacher

    # ------------------------------------------------------------------------------------------------ the loop

    def run(self, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
        """Train to `optim.steps`; returns the last metrics. `resume` continues from the newest intact checkpoint
        (CheckpointError when there are checkpoints and none is intact). A fresh run into a directory that holds
        another run's outputs raises RunDirError, unless `overwrite` deletes them first."""
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the run in "
                             f"{self.run_dir}, --overwrite deletes it")
        self._start(self.group.run_on_main(lambda: start_run_dir(self.run_dir, resume, overwrite)))
        last: dict = {}
        steps = self.config.optim.steps
        bar = tqdm(total=steps, initial=self.step, disable=not (progress and self.group.is_main), desc="oprd",
                   dynamic_ncols=True)
        while self.step < steps:
            logs = self.logs_at(self.step + 1)
            last = self.train_step(with_metrics=logs)
            if self.evaluates_at(self.step):
                last.update(self.evaluate())
            if logs:
                self._log(last)
            save_every = self.config.run.save_every
            if (save_every and self.step % save_every == 0) or self.step == steps:
                self._save()
            bar.update(1)
            if logs:
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss/total", "eval/accuracy")})
        bar.close()
        return last

    def _start(self, checkpoint: Path | None) -> None:
        """Continue from `checkpoint` (its step, prompt position and random state; metrics logged after it are
        dropped), or start afresh from the run's seed; then write the config."""
        main = self.group.is_main
        if checkpoint is not None:
            state = load_run_checkpoint(self.group, checkpoint, model=self.student, optimizer=self.optimizer,
                                        scheduler=self.scheduler, strategy=self._strategy)
            self.step, self.stream.position = state.step, state.data_position
            if main:  # a crash may have left lines after the checkpoint, the last one torn
                metrics_log.truncate(self.metrics_path, self.step)
        else:
            torch.manual_seed(self.config.run.seed + self.group.rank)
            if main:
                self.metrics_path.unlink(missing_ok=True)
        if main:
            save_config(self.config, self.run_dir / "config.yaml")
        self._sync_engine()  # the engine serves the weights the run starts (or resumes) from

    @property
    def spec(self) -> ObjectiveSpec:
        """The objective of the next step."""
        return self.objective_at(self.step + 1)[0]

    @property
    def plan(self):
        return self.objective_at(self.step + 1)[1]

    def objective_at(self, step: int):
        """(objective, layer plan) of step `step` (1-based): those of the last phase that has started by then."""
        phase = phase_at(self.phases, step)
        return phase.spec, phase.plan

    def logs_at(self, step: int) -> bool:
        """Whether step `step` (1-based) writes a metrics line: every `run.log_every` steps, the last step, and every
        step that evaluates. Only these steps compute metrics (no host synchronisation for them otherwise)."""
        return step % self.config.run.log_every == 0 or step == self.config.optim.steps or self.evaluates_at(step)

    def evaluates_at(self, step: int) -> bool:
        every = self.config.eval.every
        return bool(self.eval_prompts) and ((every and step % every == 0) or step == self.config.optim.steps)

    def train_step(self, with_metrics: bool = True) -> dict:
        """One optimizer step over `optim.grad_accum` micro-batches of rollouts; its metrics when `with_metrics`
        (else only the step number: nothing is read back to the host for metrics)."""
        cfg = self.config
        start = time.perf_counter()
        if self.device.type == "cuda" and with_metrics:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        batches = [self._rollouts(micro) for micro in range(cfg.optim.grad_accum)]  # all first: the window's counts
        rollout_s = time.perf_counter() - start
        drift = self._drift(batches) if with_metrics else {}  # before the update: the weights that sampled them
        spec, plan = self.objective_at(self.step + 1)
        sums = accumulate_gradients(spec, self.student, self.teacher, batches, plan, self._autocast,
                                    with_metrics=with_metrics, window_total=self._window_total)
        if not self.sharded:  # FSDP2 summed them in backward
            self.group.sum_gradients(self.student.parameters())  # each rank's share of the one-batch gradient
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.optim.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        lr = self.scheduler.get_last_lr()[0]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.run.seed * 1_000_003 + self.step)  # the same on every rank (see below)
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        sync_s = self._sync_engine()  # on-policy: the next rollouts come from the updated weights
        if not with_metrics:
            return {"step": self.step}
        sums = reduce_metrics(self.group, sums)  # this rank's shares of the window -> the window's
        timings = {"time/rollout_s": rollout_s, "time/weight_sync_s": sync_s, **drift}
        sums.update(self._batch_metrics(batches, grad_norm, lr, time.perf_counter() - start, timings))
        return {"step": self.step, "world_size": self.group.size, **sums}

    def evaluate(self) -> dict:
        """avg@k on the evaluation prompts; under several processes each rank grades a contiguous share and the
        counts are summed (so the samples differ from a one-process run's: each rank draws its own). Shares are
        padded to equal length with ungraded prompts: a sharded student's generation is collective."""
        e, rank = self.config.eval, self.group.rank
        per = -(-len(self.eval_prompts) // self.group.size)
        share = self.eval_prompts[rank * per:(rank + 1) * per]
        graded = len(share)
        share += self.eval_prompts[:1] * (per - graded)
        with self._autocast():
            counts = evaluation_counts(self.student, self.tokenizer, share, samples=e.samples,
                                       temperature=e.temperature, max_new_tokens=e.max_new_tokens, grader=self.grader,
                                       seed=self.config.run.seed + 1 + rank,
                                       chat_template=self.config.data.chat_template, graded=graded)
        return EvalCounts(*map(int, self.group.sum([counts.correct, counts.total, counts.length]))).metrics()

    def save_final(self, path: str | Path, tokenizer=None) -> None:
        """The student (and `tokenizer`) as an HF model directory, written by rank 0. Every rank must call it."""
        state = full_model_state(self.student) if self.sharded else None

        def write() -> None:
            self.student.save_pretrained(path, **({} if state is None else {"state_dict": state}))
            if tokenizer is not None:
                tokenizer.save_pretrained(path)

        self.group.run_on_main(write)

    def close(self) -> None:
        """Free the rollout engine (vLLM's model and KV cache); the trainer cannot sample afterwards."""
        self.engine.close()

    # ------------------------------------------------------------------------------------------------ helpers

    def _rollouts(self, micro: int = 0):
        """One micro-batch: the next `rollout.prompts_per_step` prompts, sampled from the student as it is now.
        An engine with per-request streams (vLLM) seeds them from the run's seed, rank, step and micro-batch."""
        r, chat_template = self.config.rollout, self.config.data.chat_template
        prompts = [p["prompt"] for p in self.group.shard(self.stream.take(r.prompts_per_step),
                                                         "rollout.prompts_per_step")]
        seed = ((self.config.run.seed * 1_000_003 + self.group.rank) * 1_000_003 + self.step) * 1_000 + micro
        sampling = Sampling(r.responses_per_prompt, r.max_new_tokens, r.temperature, r.top_p, self.vocab_limit,
                            chat_template, seed)
        hf = self.engine.name == "hf"
        with self._autocast() if hf else contextlib.nullcontext():  # on CUDA: HF decoding (and its KV cache) in bf16
            rollouts = self.engine.generate(prompts, sampling)
        if self.teacher_tokenizer is not None:
            rollouts.teacher = teacher_view(rollouts, self.tokenizer, self.teacher_tokenizer, prompts,
                                            student_eos_ids=eos_token_ids(self.student, self.tokenizer),
                                            chat_template=chat_template)
        return rollouts

    def _batch_metrics(self, batches, grad_norm, lr: float, elapsed: float, timings: dict) -> dict:
        """The step's own metrics, combined with the window's over the ranks (rank_metrics)."""
        tokens = sum(int(b.response_mask.sum()) for b in batches)
        out = {"response/length": float(sum(b.response_lengths.float().mean() for b in batches)) / len(batches)}
        if grad_norm is not None:
            out["grad/norm"] = float(grad_norm)
        out = reduce_metrics(self.group, {**out, "tokens/response": tokens, "time/step_s": elapsed, **timings,
                                          **self._memory()})
        tokens, elapsed = out.pop("tokens/response"), out["time/step_s"]
        return {**out, "lr": lr, "time/tokens_per_s": tokens / elapsed}

    def _sync_engine(self) -> float:
        """Hand the student's weights to the rollout engine (nothing for the hf engine); the seconds it took."""
        if self.engine.name == "hf":
            return 0.0
        start = time.perf_counter()
        self.engine.sync(sync_state(self.student, self.sharded))
        return time.perf_counter() - start

    def _drift(self, batches) -> dict:
        """`rollout/logprob_gap`: the mean |engine - trainer| log-prob of the sampled tokens (engines that report
        them): how far off-policy the rollouts are."""
        if batches[0].sampled_log_probs is None:
            return {}
        start = time.perf_counter()
        with self._autocast():
            gaps = [logprob_gap(self.student, b) for b in batches]
        return {"rollout/logprob_gap": sum(g for g, _ in gaps) / max(1, sum(n for _, n in gaps)),
                "time/logprob_gap_s": time.perf_counter() - start}

    def _window_total(self, counts: TokenCounts) -> TokenCounts:
        return TokenCounts(*self.group.sum([counts.oprd, counts.opd]))

    def _save(self) -> None:
        """A checkpoint of this step, with every rank's random state (oprd.parallel.checkpointing)."""
        save_run_checkpoint(self.group, self.run_dir, model=self.student, optimizer=self.optimizer,
                            scheduler=self.scheduler, step=self.step, data_position=self.stream.position,
                            keep=self.config.run.keep_checkpoints, strategy=self._strategy)

    @property
    def _strategy(self) -> str:
        return run_strategy(self.group, self.config.parallel.strategy)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _memory(self) -> dict:
        if self.device.type == "cuda":
            return {"memory/peak_allocated_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        return {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def _log(self, metrics: dict) -> None:
        if self.group.is_main:
            metrics_log.append(self.metrics_path, metrics)
