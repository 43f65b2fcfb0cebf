"""`oprd demo`: the whole method end to end on the embedded arithmetic task, with no downloads.

1. Build the character tokenizer and a tiny Llama; train it by supervised learning: the teacher.
2. Keep candidate checkpoints of the same run; the student is the one whose accuracy on a held-out selection set
   is nearest `student_ratio` (default 0.65, the paper's student/teacher ratio) of the teacher's: same
   architecture and initialisation, weaker (the paper's R1-distill -> JustRL relation), chosen by accuracy, not by
   step (oprd.demo.student_choice).
3. Distil the student on-policy with each method from the same seed and step budget.
4. Evaluate teacher, student and every result (avg@k exact match). Then write a Table 2 (accuracy, share of the
   gap closed) and a Table 3 (wall-clock, delta-peak of one update), plots of accuracy and
   `rep/cosine_similarity` against step, and results.json.

Everything goes under one output directory.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict

from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from oprd.demo.diagnostics import head_distance
from oprd.demo.distill import distill_runs
from oprd.demo.report import plot, render_tables
from oprd.demo.settings import DemoSettings
from oprd.demo.sft import train_sft
from oprd.demo.stage import Stage, accuracy, new_model, prepare, save_model
from oprd.demo.student_choice import CandidateKeeper, StudentChoice, choose_student


def run_demo(settings: DemoSettings, progress: bool = True) -> dict:
    """The four stages (module docstring); returns results.json's content."""
    stage = prepare(settings, progress)
    trained = teacher_and_student(settings, stage)
    stage.log("[2/4] evaluating teacher and student")
    teacher = LlamaForCausalLM.from_pretrained(stage.out / "models" / "teacher").eval()
    acc_teacher = accuracy(teacher, stage.tokenizer, stage.task, stage.eval_set, settings)
    student = LlamaForCausalLM.from_pretrained(stage.out / "models" / "student")
    acc_student = accuracy(student, stage.tokenizer, stage.task, stage.eval_set, settings)
    stage.log(f"      teacher {acc_teacher:.3f}, student {acc_student:.3f}")
    results: dict = {"settings": asdict(settings), "teacher_accuracy": acc_teacher, "student_accuracy": acc_student,
                     "student_head_distance": head_distance(student, teacher), **trained, "methods": {}}
    results["methods"] = distill_runs(settings, stage, settings.runs(), teacher, acc_student, acc_teacher, "[3/4]")
    write_outputs(stage, results, render_tables, plot, "[4/4]")
    return results


def teacher_and_student(settings: DemoSettings, stage: Stage, label: str = "[1/4]") -> dict:
    """SFT of the teacher, keeping candidate students every `candidate_every` steps; the student is the one nearest
    `student_ratio` of the teacher's accuracy on the selection set, searched coarse to fine (oprd.demo.student_choice).
    Both are saved under models/; returns the SFT facts and the choice."""
    stage.log(f"{label} supervised teacher: {settings.sft_steps} steps, a candidate student every "
              f"{settings.candidate_every}")
    model = new_model(stage.tokenizer, settings)
    keeper = CandidateKeeper(settings.candidate_every)
    bar = tqdm(total=settings.sft_steps, disable=not stage.progress, desc="sft", dynamic_ncols=True)

    def on_step(step, m, loss):
        keeper(step, m, loss)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3g}")

    start = time.perf_counter()
    losses = train_sft(model, stage.tokenizer, stage.train, steps=settings.sft_steps, batch_size=settings.sft_batch,
                       lr=settings.sft_lr, seed=settings.seed, on_step=on_step)
    bar.close()
    seconds = time.perf_counter() - start
    save_model(model, stage, "teacher")
    choice = _choose_student(settings, stage, model, keeper)
    return {"sft": {"seconds": seconds, "final_loss": losses[-1]}, "student_choice": asdict(choice)}


def _choose_student(settings: DemoSettings, stage: Stage, teacher, keeper: CandidateKeeper) -> StudentChoice:
    probe = copy.deepcopy(teacher)  # the candidates' architecture, without touching the global RNG

    def accuracy_of(state: dict) -> float:
        probe.load_state_dict(state)
        return accuracy(probe, stage.tokenizer, stage.task, stage.select_set, settings)

    teacher_accuracy = accuracy(teacher, stage.tokenizer, stage.task, stage.select_set, settings)
    choice, state = choose_student(keeper.states, accuracy_of, teacher_accuracy, settings.student_ratio,
                                   stride=settings.candidate_stride)
    probe.load_state_dict(state)
    save_model(probe, stage, "student")
    reached = "" if choice.reached else f" (no candidate reached {settings.student_ratio:g} of it: the best taken)"
    stage.log(f"      student: SFT step {choice.step}, {choice.accuracy:.3f} on the selection set against the "
              f"teacher's {teacher_accuracy:.3f}{reached}")
    return choice


def write_outputs(stage: Stage, results: dict, render, draw, label: str) -> None:
    """results.json, tables.md (`render(results)`) and plots/ (`draw(results, directory)`), and the tables shown."""
    stage.log(f"{label} tables and plots")
    (stage.out / "results.json").write_text(json.dumps(results, indent=2))
    tables = render(results)
    (stage.out / "tables.md").write_text(tables)
    draw(results, stage.out / "plots")
    stage.log(tables)
