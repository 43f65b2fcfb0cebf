"""The demo's distillation runs: each table row (`DemoRun`) trained from the saved student with the trainer over
every distillation seed, evaluated, diagnosed (oprd.demo.diagnostics) and combined (oprd.demo.seeds)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from transformers import LlamaForCausalLM

from oprd.demo.diagnostics import decoded_by_teacher, final_cosines, head_distance
from oprd.demo.seeds import combine_seeds
from oprd.demo.settings import DemoRun, DemoSettings
from oprd.demo.stage import Stage, accuracy, gap_closed
from oprd.tasks import ArithmeticTask
from oprd.train.config import load_config
from oprd.train.memory import delta_peak_bytes
from oprd.train.trainer import Trainer


def distill_config(settings: DemoSettings, run: DemoRun, seed: int, run_dir: Path, task: ArithmeticTask):
    """The trainer's config for `run` under `seed`: the demo's budgets, every position and layer distilled."""
    return load_config(overrides=[
        f"run.dir={run_dir}", f"run.seed={seed}", "run.device=cpu", f"method.name={run.method}",
        f"oprd.head_from_teacher={str(run.head_from_teacher).lower()}",
        f"method.topk={settings.topk}", f"method.mu={settings.mu}", f"optim.steps={settings.distill_steps}",
        f"optim.lr={settings.distill_lr}", "optim.warmup_ratio=0.1",
        f"rollout.prompts_per_step={settings.prompts_per_step}",
        f"rollout.responses_per_prompt={settings.responses_per_prompt}",
        f"rollout.max_new_tokens={task.max_solution_chars + 2}", "oprd.positions=all", "oprd.layers=all",
        f"eval.every={settings.eval_every}", f"eval.samples={settings.eval_samples}",
        f"eval.max_new_tokens={task.max_solution_chars + 2}", f"data.eval_size={settings.eval_size}",
        *run.overrides])


def distill_runs(settings: DemoSettings, stage: Stage, runs: list[DemoRun], teacher, acc_student: float,
                 acc_teacher: float, label: str, teacher_tokenizer=None) -> dict:
    """Every run (a table row) over the seeds, in order: label -> its combined entry."""
    methods = {}
    for i, run in enumerate(runs, start=1):
        stage.log(f"{label} distilling with {run.label} ({i}/{len(runs)})")
        methods[run.label] = _distill_seeds(settings, stage, run, teacher, acc_student, acc_teacher,
                                            teacher_tokenizer)
    return methods


def _distill_seeds(settings: DemoSettings, stage: Stage, run: DemoRun, teacher, acc_student: float,
                   acc_teacher: float, teacher_tokenizer=None) -> dict:
    """One table row: the run over every distillation seed (oprd.demo.seeds)."""
    seeds = [settings.seed + i for i in range(settings.seeds)]
    entries = [_distill(settings, stage, run, seed, teacher, acc_student, acc_teacher, measure_peak=i == 0,
                        teacher_tokenizer=teacher_tokenizer) for i, seed in enumerate(seeds)]
    combined = combine_seeds(entries, seeds)
    stage.log(f"      {run.label}: accuracy {combined['accuracy']:.3f} ± {combined['accuracy_spread']:.3f} over "
              f"{len(seeds)} seeds")
    return combined


def _distill(settings: DemoSettings, stage: Stage, run: DemoRun, seed: int, teacher, acc_student: float,
             acc_teacher: float, measure_peak: bool, teacher_tokenizer=None) -> dict:
    """One distillation run from the saved student, and its per-seed entry (teacher_tokenizer: the teacher's own,
    when it is not the student's)."""
    run_dir = stage.out / "runs" / run.dir_name / f"seed{seed}"
    config = distill_config(settings, run, seed, run_dir, stage.task)
    student = LlamaForCausalLM.from_pretrained(stage.out / "models" / "student")
    trainer = Trainer(config, student, teacher, stage.tokenizer, stage.prompts, stage.eval_set,
                      grader=stage.task.grade, teacher_tokenizer=teacher_tokenizer)  # copies the teacher's head
    peak = _update_delta_peak(config, student, teacher, stage.tokenizer, stage.prompts, stage.task,
                              teacher_tokenizer) if measure_peak else 0
    start = time.perf_counter()
    trainer.run(progress=stage.progress, overwrite=True)  # the demo rebuilt its models: an earlier run is stale
    seconds = time.perf_counter() - start
    student.save_pretrained(run_dir / "final")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(0, acc_student)] + [(m["step"], m["eval/accuracy"]) for m in metrics if "eval/accuracy" in m]
    cosine = [(m["step"], m["rep/cosine_similarity"]) for m in metrics if "rep/cosine_similarity" in m]
    final = curve[-1][1]
    diagnostics = _diagnostics(settings, stage, student, teacher, metrics, acc_student, acc_teacher)
    via = diagnostics.get("accuracy_teacher_head")
    through = "" if via is None else f" ({via:.3f} through the teacher's head)"
    stage.log(f"      {run.label}, seed {seed}: accuracy {final:.3f}{through}, {seconds:.1f} s")
    return {"seed": seed, "accuracy": final, "gap_closed": gap_closed(final, acc_student, acc_teacher),
            "seconds": seconds, "seconds_per_step": seconds / settings.distill_steps,
            "update_delta_peak_mb": peak / 2**20, "accuracy_curve": curve, "cosine_curve": cosine, **diagnostics}


def _diagnostics(settings: DemoSettings, stage: Stage, student, teacher, metrics: list[dict], acc_student: float,
                 acc_teacher: float) -> dict:
    """The trained student's numbers that explain its result (oprd.demo.diagnostics); the head diagnostics need
    the same head shapes (not so for the Bridge demo's wider teacher), the per-layer cosine the same widths."""
    out = {"response_length": _mean_response_length(metrics)}
    unpaired = [m["bridge/unpaired_share"] for m in metrics if "bridge/unpaired_share" in m]
    if unpaired:  # across tokenizers: the share of student positions without a teacher partner
        out["unpaired_share"] = sum(unpaired) / len(unpaired)
    if student.get_output_embeddings().weight.shape != teacher.get_output_embeddings().weight.shape:
        return out
    via_teacher = accuracy(decoded_by_teacher(student, teacher), stage.tokenizer, stage.task, stage.eval_set, settings)
    return {**out, "accuracy_teacher_head": via_teacher,
            "gap_closed_teacher_head": gap_closed(via_teacher, acc_student, acc_teacher),
            "head_distance": head_distance(student, teacher), "cosine_per_layer": final_cosines(metrics)}


def _mean_response_length(metrics: list[dict], last: int = 20) -> float:
    """The mean response length over the last `last` logged steps (the paper saw Bridge answers 2-3x shorter)."""
    lengths = [m["response/length"] for m in metrics if "response/length" in m][-last:]
    return sum(lengths) / len(lengths) if lengths else float("nan")


def _update_delta_peak(config, student, teacher, tokenizer, prompts, task, teacher_tokenizer=None) -> int:
    """Delta-peak of one full update (rollout, teacher pass, student pass, loss, backward, step), measured on a copy
    of the student so that the measured run itself is untouched."""
    probe_config = copy.deepcopy(config)
    probe_config.run.dir = str(Path(config.run.dir) / "probe")
    probe = Trainer(probe_config, copy.deepcopy(student), teacher, tokenizer, prompts, grader=task.grade,
                    teacher_tokenizer=teacher_tokenizer)
    _, peak = delta_peak_bytes(probe.train_step, probe.device)
    return peak
