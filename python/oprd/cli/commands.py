"""The `oprd` command: `demo`, `train`, `eval`, `bridge` (oprd.cli.bridge).

    oprd demo [--out DIR] [--quick] [--seed N] [--student-ratio R] [--bridge]
    oprd train --config run.yaml [section.key=value ...] [--resume | --overwrite]
    oprd eval --model DIR --prompts FILE [--samples K] [--temperature T] [--max-new-tokens N] [--size N]
              [--chat-template auto|on|off]
    oprd bridge collect|fit ...

A user's mistake is one `error: ...` line on stderr and exit status 2, never a traceback. `train` and `eval` check
everything they can before any model loads (`oprd.cli.preflight`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oprd.cli.bridge import add_bridge_parser
from oprd.cli.loading import load_model as _load_model
from oprd.cli.loading import load_tokenizer as _load_tokenizer
from oprd.cli.loading import teacher_tokenizer_for
from oprd.rollout.prompt_format import CHAT_TEMPLATE_MODES, uses_template


def _load_config(path: str | None, overrides: list[str]):
    from oprd.train.config import load_config

    if path is not None and Path(path).is_dir():
        raise ValueError(f"--config {path} is a directory; give the path of a YAML config file")
    try:
        return load_config(path, overrides)
    except UnicodeDecodeError as exc:  # config.py reads the file as UTF-8 and lets this through without the name
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ValueError(f"config file {path}:{line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save "
                         "it as UTF-8") from None


def cmd_demo(args) -> int:
    from oprd.cli.preflight import check_run_dir
    from oprd.demo import DemoSettings, run_demo

    check_run_dir(args.out, overwrite=True, key="--out")  # the demo rebuilds and overwrites its own runs
    if not 0 < args.student_ratio <= 1:
        raise ValueError(f"--student-ratio must be in (0, 1], a share of the teacher's accuracy; got "
                         f"{args.student_ratio:g}")
    settings = DemoSettings.quick(args.out, args.seed) if args.quick else DemoSettings(out=args.out, seed=args.seed)
    settings.student_ratio = args.student_ratio
    if args.bridge:
        from oprd.demo.bridge import BridgeDemoSettings, run_bridge_demo

        bridge = BridgeDemoSettings.quick(args.out, args.seed) if args.quick else BridgeDemoSettings(base=settings)
        bridge.base.student_ratio = args.student_ratio
        run_bridge_demo(bridge)
    else:
        run_demo(settings)
    print(f"artefacts in {Path(args.out).resolve()}")
    return 0


def cmd_train(args) -> int:
    from oprd.cli.preflight import check_train
    from oprd.parallel.group import leave
    from oprd.train.config import resolve_device, resolve_dtype
    from oprd.train.trainer import Trainer

    config = _load_config(args.config, args.overrides)
    prompts, eval_prompts = check_train(config, resume=args.resume, overwrite=args.overwrite)
    device = resolve_device(config.run.device)
    tokenizer = _load_tokenizer(config.model.student, "model.student")
    student = _load_model(config.model.student, "model.student")  # fp32 master weights; bf16 autocast on CUDA
    teacher = _load_model(config.model.teacher, "model.teacher", resolve_dtype(config.model.dtype, device))
    trainer = Trainer(config, student, teacher, tokenizer, prompts, eval_prompts,
                      teacher_tokenizer=teacher_tokenizer_for(tokenizer, config.model.teacher))
    try:
        last = trainer.run(resume=args.resume, overwrite=args.overwrite)
        final = Path(config.run.dir) / "final"
        trainer.save_final(final, tokenizer)  # under torchrun, rank 0 writes and reports
        if trainer.group.is_main:
            print(json.dumps({k: v for k, v in last.items() if not k.startswith("rep/cosine_similarity/")}, indent=2))
            print(f"final student in {final}")
        trainer.group.barrier()
    finally:
        trainer.close()  # the rollout engine first: vLLM's teardown needs the process group
        leave()
    return 0


def cmd_eval(args) -> int:
    from oprd.cli.preflight import check_eval
    from oprd.train.evaluate import evaluate

    examples = check_eval(args.model, args.prompts, args.prompt_field, args.answer_field)[: args.size]
    tokenizer = _load_tokenizer(args.model, "--model")
    uses_template(tokenizer, args.chat_template, "oprd eval", "--chat-template")  # "on" needs one: before loading
    model = _load_model(args.model, "--model")
    result = evaluate(model, tokenizer, examples, samples=args.samples, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, chat_template=args.chat_template)
    print(json.dumps(result, indent=2))
    return 0


def _at_least_1(text: str) -> int:
    """An argparse type: an int >= 1 (0 samples crashed inside generate; size 0 scored nothing as 0%)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1; got {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _field(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must name a JSON field; got an empty string")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oprd", description="On-Policy Representation Distillation")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the whole method end to end on the embedded arithmetic task")
    demo.add_argument("--out", default="oprd-demo", help="output directory (default: oprd-demo)")
    demo.add_argument("--quick", action="store_true", help="about a minute; for tests")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--student-ratio", type=float, default=0.65,
                      help="the student is the SFT checkpoint nearest this share of the teacher's accuracy "
                           "(default 0.65, the paper's 32.9/50.8; 0.15: a distant student)")
    demo.add_argument("--bridge", action="store_true",
                      help="OPRD-Bridge instead: a 4x96 teacher for the 3x64 student (collect, fit, train)")
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
    ev.add_argument("--prompt-field", type=_field, default="prompt")
    ev.add_argument("--answer-field", type=_field, default="answer")
    ev.add_argument("--samples", type=_at_least_1, default=4)
    ev.add_argument("--temperature", type=_positive, default=0.7)
    ev.add_argument("--max-new-tokens", type=_at_least_1, default=256)
    ev.add_argument("--size", type=_at_least_1, default=64, help="evaluate the first N prompts")
    ev.add_argument("--chat-template", choices=CHAT_TEMPLATE_MODES, default="auto",
                    help="prompts in the tokenizer's chat template: auto (where it has one), on (required), off; "
                         "as the run's data.chat_template")
    ev.set_defaults(run=cmd_eval)
    add_bridge_parser(sub, _at_least_1, _positive)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        from oprd.cli.preflight import one_line

        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
