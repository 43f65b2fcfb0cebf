"""`oprd bridge collect|fit`: OPRD-Bridge Stages 0 and 1 from the command line (Stage 2 is `oprd train` with
`method.name=oprd_bridge bridge.path=...`).

    oprd bridge collect --student DIR --teacher DIR --prompts FILE --out ROWS_DIR [--num-prompts 2000] ...
    oprd bridge fit --rows ROWS_DIR --out bridge.safetensors [--rank 8] [--ranks 1,2,4,8,16,32] ...

Everything that can be checked before a model loads is checked first; a user's mistake is one error line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_collect(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from oprd.bridge.collect import MANIFEST, CollectSettings, collect_rows
    from oprd.config import resolve_device
    from oprd.data import load_prompts
    from oprd.loading import load_model, load_tokenizer
    from oprd.model_files import check_model_dir

    out = Path(args.out)
    if (out / MANIFEST).exists() or any(out.glob("rows-*.safetensors")):
        raise ValueError(f"--out {args.out} already holds collected rows; choose a new directory")
    settings = CollectSettings(prompts_per_batch=args.batch, responses_per_prompt=args.responses_per_prompt,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               rows_per_response=args.rows_per_response, max_rows=args.max_rows, seed=args.seed)
    prompts = [p["prompt"] for p in load_prompts(args.prompts, args.prompt_field)][: args.num_prompts]
    check_model_dir(args.student, "--student", tokenizer=True)
    check_model_dir(args.teacher, "--teacher")
    layers = _student_layers(args.layers, args.student)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.student, "--student")
    student = load_model(args.student, "--student").to(device)
    teacher = load_model(args.teacher, "--teacher").to(device)
    bar = tqdm(total=args.max_rows, desc="rows", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    seen = [0]

    def progress(total: int) -> None:
        bar.update(total - seen[0])
        seen[0] = total

    manifest = collect_rows(student, teacher, tokenizer, prompts, out, layers=layers, settings=settings,
                            dtype=torch.float32, on_batch=progress)
    bar.close()
    print(f"{manifest['rows']} rows of {len(manifest['student_layers'])} layer pairs from {manifest['responses']} "
          f"responses to {manifest['prompts']} prompts in {manifest['shards']} shards: {out}")
    return 0


def _student_layers(text: str, student: str) -> list[int]:
    """--layers resolved against the student's depth, from its config alone (before any weights load)."""
    from transformers import AutoConfig

    from oprd.config import parse_layers
    from oprd.layers import resolve_layers

    depth = AutoConfig.from_pretrained(student, local_files_only=True).num_hidden_layers
    try:
        return resolve_layers(parse_layers(text), depth)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--layers {text!r} does not fit --student {student} ({depth} blocks): {exc}") from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1, e.g. 1,2,4,8; got {text!r}")
    return values


def add_bridge_parser(sub, at_least_1, positive) -> None:
    """The `bridge` subcommand and its `collect` and `fit` actions."""
    bridge = sub.add_parser("bridge", help="OPRD-Bridge: collect paired rows, fit the projections")
    actions = bridge.add_subparsers(dest="action", required=True)
    c = actions.add_parser("collect", help="Stage 0: both models' states on the student's answers, to shards")
    c.add_argument("--student", required=True, help="local HF model directory (with its tokenizer)")
    c.add_argument("--teacher", required=True, help="local HF model directory")
    c.add_argument("--prompts", required=True, help="JSONL prompt file")
    c.add_argument("--prompt-field", default="prompt")
    c.add_argument("--out", required=True, help="a new directory for the row shards")
    c.add_argument("--layers", default="all", help="student layers, as oprd.layers (default all)")
    c.add_argument("--num-prompts", type=at_least_1, default=2000, help="the first N prompts (paper: about 2,000)")
    c.add_argument("--responses-per-prompt", type=at_least_1, default=1)
    c.add_argument("--batch", type=at_least_1, default=8, help="prompts per generation batch")
    c.add_argument("--max-new-tokens", type=at_least_1, default=256)
    c.add_argument("--temperature", type=positive, default=1.0)
    c.add_argument("--rows-per-response", type=at_least_1, default=8)
    c.add_argument("--max-rows", type=at_least_1, default=16384, help="rows per layer in all (paper: 16,384)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.set_defaults(run=cmd_collect)
