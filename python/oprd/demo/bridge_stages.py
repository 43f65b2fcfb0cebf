"""The two stages the Bridge demo runs for each of its teachers (oprd.demo.bridge, oprd.demo.bridge_tokenizers): the
teacher's SFT, and Stage 0 + 1 (rows collected, the bridge fitted with its rank sweep)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from transformers import LlamaForCausalLM

from oprd.bridge import CollectSettings, collect_rows, save_bridge
from oprd.bridge.fit import fit_collected
from oprd.demo.sft import train_sft
from oprd.demo.stage import new_model, save_model


def train_teacher(settings, stage, tokenizer, name: str, label: str, what: str) -> LlamaForCausalLM:
    """A `teacher_layers` x `teacher_hidden` teacher on `tokenizer`, trained by SFT on the demo's examples for
    `settings.teacher_steps` steps and saved as models/`name` (with its tokenizer); `what` describes it in the log."""
    base = settings.base
    stage.log(f"{label} {what}: {settings.teacher_layers} blocks of {settings.teacher_hidden}, "
              f"{settings.teacher_steps} SFT steps")
    teacher = new_model(tokenizer, replace(base, hidden=settings.teacher_hidden, layers=settings.teacher_layers))
    train_sft(teacher, tokenizer, stage.train, steps=settings.teacher_steps, batch_size=base.sft_batch,
              lr=base.sft_lr, seed=base.seed)
    save_model(teacher, stage, name, tokenizer)
    return teacher.eval()


def collect_and_fit(settings, stage, student, teacher, name: str, rank: int, pairing,
         label: str) -> tuple[Path, dict]:
    """Stage 0 into `name`_rows/ (same tokens unless `pairing`) and Stage 1 at `rank` with the rank sweep, written
    to `name`.safetensors; returns its path and the fit's summary."""
    stage.log(f"{label} Stage 0 and 1: rows from {settings.collect_prompts} answers, the bridge at rank {rank}")
    rows = stage.out / f"{name}_rows"
    shutil.rmtree(rows, ignore_errors=True)  # the demo rebuilt its models: an earlier collection is stale
    prompts = [p["prompt"] for p in stage.prompts[: settings.collect_prompts]]
    collect_rows(student, teacher, stage.tokenizer, prompts, rows, pairing=pairing, settings=CollectSettings(
        prompts_per_batch=32, max_new_tokens=stage.task.max_solution_chars + 2,
        rows_per_response=settings.rows_per_response, max_rows=settings.max_rows, seed=settings.base.seed))
    bridge, report, manifest = fit_collected(rows, rank=rank, ranks=settings.ranks, epochs=settings.fit_epochs,
                                             lr=settings.fit_lr, seed=settings.base.seed)
    path = save_bridge(bridge, stage.out / f"{name}.safetensors")
    for pair in report["pairs"]:
        stage.log(f"      student layer {pair['student_layer']} <- teacher layer {pair['teacher_layer']}: cosine "
                  f"{pair['cosine_before']:.3f} -> {pair['cosine_after']:.3f}")
    return path, {"rank": rank, "rows": manifest["rows"], "pairs": report["pairs"],
                  "rank_sweep": report["rank_sweep"]}
