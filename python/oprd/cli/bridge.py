"""`oprd bridge collect|fit`: OPRD-Bridge Stages 0 and 1 from the command line (Stage 2 is `oprd train` with
`method.name=oprd_bridge bridge.path=...`).

    oprd bridge collect --student DIR --teacher DIR --prompts FILE --out ROWS_DIR [--num-prompts 2000] ...
    oprd bridge fit --rows ROWS_DIR --out bridge.safetensors [--rank 8] [--ranks 1,2,4,8,16,32] ...

Everything that can be checked before a model loads is checked first; a user's mistake is one error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oprd.rollout.prompt_format import CHAT_TEMPLATE_MODES, uses_template


def cmd_collect(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from oprd.bridge.collect import CollectSettings, check_new_rows_dir, collect_rows, other_tokens
    from oprd.cli.loading import load_model, load_tokenizer, teacher_tokenizer_for
    from oprd.cli.model_files import check_model_dir
    from oprd.rollout import eos_token_ids
    from oprd.rollout.prompts import load_prompts
    from oprd.train.config import resolve_device

    out = Path(args.out)
    check_new_rows_dir(out, "--out")
    settings = CollectSettings(prompts_per_batch=args.batch, responses_per_prompt=args.responses_per_prompt,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               rows_per_response=args.rows_per_response, max_rows=args.max_rows, seed=args.seed,
                               chat_template=args.chat_template)
    prompts = [p["prompt"] for p in load_prompts(args.prompts, args.prompt_field)][: args.num_prompts]
    check_model_dir(args.student, "--student", tokenizer=True)
    check_model_dir(args.teacher, "--teacher")
    layers = _student_layers(args.layers, args.student)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.student, "--student")
    teacher_tokenizer = teacher_tokenizer_for(tokenizer, args.teacher, "--teacher")
    for tok in (tokenizer, teacher_tokenizer):  # --chat-template on: each tokenizer needs one, checked before loading
        if tok is not None:
            uses_template(tok, settings.chat_template, "oprd bridge collect", "--chat-template")
    student = load_model(args.student, "--student").to(device)
    teacher = load_model(args.teacher, "--teacher").to(device)
    bar = tqdm(total=args.max_rows, desc="rows", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    seen = [0]

    def progress(total: int) -> None:
        bar.update(total - seen[0])
        seen[0] = total

    pairing = None if teacher_tokenizer is None else other_tokens(tokenizer, teacher_tokenizer,
                                                                  eos_token_ids(student, tokenizer),
                                                                  settings.chat_template)
    manifest = collect_rows(student, teacher, tokenizer, prompts, out, layers=layers, settings=settings,
                            pairing=pairing, dtype=torch.float32, on_batch=progress)
    bar.close()
    print(f"{manifest['rows']} rows of {len(manifest['student_layers'])} layer pairs from {manifest['responses']} "
          f"responses to {manifest['prompts']} prompts in {manifest['shards']} shards: {out}")
    return 0


def cmd_fit(args) -> int:
    from oprd.bridge import save_bridge
    from oprd.bridge.fit import fit_collected

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out} must end in .safetensors (bridge files are safetensors only)")
    bridge, report, manifest = fit_collected(args.rows, rank=args.rank, ranks=args.ranks or (), epochs=args.epochs,
                                             lr=args.lr, batch_size=args.batch_size, holdout=args.holdout,
                                             max_rows=args.max_rows, seed=args.seed)
    save_bridge(bridge, out)
    report_path = out.with_suffix(".json")
    report_path.write_text(json.dumps({"rows_dir": str(args.rows), "collection": manifest, **report}, indent=2))
    for pair in report["pairs"]:
        print(f"student layer {pair['student_layer']} <- teacher layer {pair['teacher_layer']}: cosine "
              f"{pair['cosine_before']:.3f} -> {pair['cosine_after']:.3f} (best epoch {pair['best_epoch']})")
    for entry in report.get("rank_sweep", []):
        print(f"rank {entry['rank']}: mean cosine {entry['cosine']:.3f}")
    print(f"bridge (rank {bridge.rank}): {out}; report: {report_path}")
    return 0


def _student_layers(text: str, student: str) -> list[int] | str:
    """--layers resolved against the student's depth, from its config alone (before any weights load)."""
    from oprd.cli.preflight import model_config, student_layers
    from oprd.train.config import parse_layers

    layers = student_layers(text, model_config(student, "--student"), student, "--layers", "--student")
    return parse_layers(text) if layers is None else layers


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
    c.add_argument("--chat-template", choices=CHAT_TEMPLATE_MODES, default="auto",
                   help="prompts in each tokenizer's chat template: auto (where it has one), on (required), off")
    c.add_argument("--device", default="auto")
    c.set_defaults(run=cmd_collect)
    f = actions.add_parser("fit", help="Stage 1: P_T (teacher PCA) and P_S (trained), to bridge.safetensors")
    f.add_argument("--rows", required=True, help="the directory `oprd bridge collect` wrote")
    f.add_argument("--out", required=True, help="the bridge file to write (.safetensors); the report goes beside it")
    f.add_argument("--rank", type=at_least_1, default=8, help="r (paper: 8 across architectures, 4 tokenizers)")
    f.add_argument("--ranks", type=_int_list, default=None, help="also fit these ranks: the sweep, e.g. 1,2,4,8,16")
    f.add_argument("--epochs", type=at_least_1, default=20)
    f.add_argument("--lr", type=positive, default=1e-3)
    f.add_argument("--batch-size", type=at_least_1, default=256)
    f.add_argument("--holdout", type=positive, default=0.1, help="share of rows held out to pick the best epoch")
    f.add_argument("--max-rows", type=at_least_1, default=16384, help="rows for each teacher covariance")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(run=cmd_fit)
