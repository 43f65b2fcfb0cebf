"""The `oprd` command: `demo`, `train`, `eval`.

    oprd demo [--out DIR] [--quick] [--seed N]
    oprd train --config run.yaml [section.key=value ...] [--resume | --overwrite]
    oprd eval --model DIR --prompts FILE [--samples K] [--temperature T] [--max-new-tokens N] [--size N]

Configuration errors, missing model directories and prompt files without the required fields are reported before
any work starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_model(path: str, what: str, dtype=None):
    from transformers import AutoModelForCausalLM

    directory = Path(path)
    if not path or not (directory / "config.json").is_file():
        raise FileNotFoundError(f"oprd: {what} {path!r} is not a local Hugging Face model directory (no config.json)")
    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def cmd_demo(args) -> int:
    from oprd.demo import DemoSettings, run_demo

    settings = DemoSettings.quick(args.out, args.seed) if args.quick else DemoSettings(out=args.out, seed=args.seed)
    run_demo(settings)
    print(f"artefacts in {Path(args.out).resolve()}")
    return 0


def cmd_train(args) -> int:
    from oprd.config import load_config, resolve_device, resolve_dtype
    from oprd.data import load_prompts
    from oprd.trainer import Trainer

    config = load_config(args.config, args.overrides)
    for key, value in (("model.student", config.model.student), ("model.teacher", config.model.teacher),
                       ("data.prompts", config.data.prompts)):
        if not value:
            raise ValueError(f"oprd train: `{key}` must be set (in the config file or as {key}=...)")
    prompts = load_prompts(config.data.prompts, config.data.prompt_field, "")
    eval_prompts = []
    if config.data.answer_field:
        eval_prompts = load_prompts(config.data.eval_prompts or config.data.prompts, config.data.prompt_field,
                                    config.data.answer_field)[: config.data.eval_size]
    device = resolve_device(config.run.device)
    student = _load_model(config.model.student, "model.student")  # fp32 master weights; bf16 autocast on CUDA
    teacher = _load_model(config.model.teacher, "model.teacher", resolve_dtype(config.model.dtype, device))
    tokenizer = _load_tokenizer(config.model.student)
    trainer = Trainer(config, student, teacher, tokenizer, prompts, eval_prompts)
    last = trainer.run(resume=args.resume, overwrite=args.overwrite)
    final = Path(config.run.dir) / "final"
    student.save_pretrained(final)
    tokenizer.save_pretrained(final)
    print(json.dumps({k: v for k, v in last.items() if not k.startswith("rep/cosine_similarity/")}, indent=2))
    print(f"final student in {final}")
    return 0


def cmd_eval(args) -> int:
    from oprd.data import load_prompts
    from oprd.evaluate import evaluate

    model = _load_model(args.model, "--model")
    tokenizer = _load_tokenizer(args.model)
    examples = load_prompts(args.prompts, args.prompt_field, args.answer_field)[: args.size]
    result = evaluate(model, tokenizer, examples, samples=args.samples, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens)
    print(json.dumps(result, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oprd", description="On-Policy Representation Distillation")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the whole method end to end on the embedded arithmetic task")
    demo.add_argument("--out", default="oprd-demo", help="output directory (default: oprd-demo)")
    demo.add_argument("--quick", action="store_true", help="about a minute; for tests")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    train = sub.add_parser("train", help="distil a local student from a local teacher on a JSONL prompt file")
    train.add_argument("--config", default=None, help="YAML config (see docs/trainer.md)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start again in a run directory that holds a run: delete its checkpoints, metrics, final")
    train.add_argument("overrides", nargs="*", help="section.key=value")
    train.set_defaults(run=cmd_train)
    ev = sub.add_parser("eval", help="avg@k accuracy of a local model on a JSONL prompt file with answers")
    ev.add_argument("--model", required=True)
    ev.add_argument("--prompts", required=True)
    ev.add_argument("--prompt-field", default="prompt")
    ev.add_argument("--answer-field", default="answer")
    ev.add_argument("--samples", type=int, default=4)
    ev.add_argument("--temperature", type=float, default=0.7)
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--size", type=int, default=64)
    ev.set_defaults(run=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
