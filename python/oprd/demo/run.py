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
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.demo.diagnostics import decoded_by_teacher, final_cosines, head_distance
from oprd.demo.report import plot, render_tables
from oprd.demo.seeds import combine_seeds
from oprd.demo.sft import train_sft
from oprd.demo.student_choice import CandidateKeeper, StudentChoice, choose_student
from oprd.tasks import ArithmeticTask, write_jsonl
from oprd.tasks.tokenizers import build_char_tokenizer
from oprd.train.config import load_config
from oprd.train.evaluate import evaluate
from oprd.train.memory import delta_peak_bytes
from oprd.train.trainer import Trainer

METHODS = ("oprd", "opd_top1", "opd_topk", "opd_full", "oprd+opd")


@dataclass
class DemoSettings:
    out: str = "oprd-demo"
    seed: int = 0
    digits: int = 3
    hidden: int = 64
    layers: int = 3
    sft_examples: int = 20000
    sft_steps: int = 1000
    sft_batch: int = 64
    sft_lr: float = 3e-3
    student_ratio: float = 0.65  # the student: the SFT candidate nearest this share of the teacher's accuracy
    candidate_every: int = 5  # SFT steps between candidate students (all kept: the demo's models are small)
    candidate_stride: int = 5  # the coarse search evaluates every this many candidates (oprd.demo.student_choice)
    select_size: int = 64  # held-out problems the candidates and the teacher are compared on (not the eval set)
    distill_steps: int = 200
    prompts_per_step: int = 16
    responses_per_prompt: int = 2
    distill_lr: float = 5e-4
    topk: int = 16
    mu: float = 10.0  # the paper's stronger setting (mu = 10 lifted OPD top-1 the most)
    eval_size: int = 96
    eval_samples: int = 4
    eval_every: int = 40
    methods: tuple[str, ...] = METHODS
    teacher_head_methods: tuple[str, ...] = ("oprd",)  # also run these with oprd.head_from_teacher (beyond the paper)
    seeds: int = 2  # distillation seeds per method: seed, seed + 1, ...; tables show mean ± spread
    extra: dict = field(default_factory=dict)

    def runs(self) -> list["DemoRun"]:
        return ([DemoRun(m, m, False) for m in self.methods] +
                [DemoRun(f"{m} (teacher head)", m, True) for m in self.teacher_head_methods])

    @classmethod
    def quick(cls, out: str, seed: int = 0) -> "DemoSettings":
        """About a minute on two CPU cores: every stage runs, the numbers mean little."""
        return cls(out=out, seed=seed, digits=2, sft_examples=2000, sft_steps=300, distill_steps=4,
                   prompts_per_step=4, eval_size=12, eval_samples=2, eval_every=2, select_size=12)


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo's tables: a method, optionally started from the teacher's LM head and final norm."""

    label: str
    method: str
    head_from_teacher: bool
    overrides: tuple[str, ...] = ()  # more config overrides (the Bridge demo: bridge.path, method.then)
    name: str = ""  # its runs/ directory, when the method's name is not enough

    @property
    def dir_name(self) -> str:
        if self.name:
            return self.name
        return self.method.replace("+", "_plus_") + ("_teacher_head" if self.head_from_teacher else "")


def _model(tokenizer, settings: DemoSettings) -> LlamaForCausalLM:
    torch.manual_seed(settings.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=settings.hidden, intermediate_size=2 * settings.hidden,
                         num_hidden_layers=settings.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def _eval(model, tokenizer, task, examples, settings) -> float:
    result = evaluate(model, tokenizer, examples, samples=settings.eval_samples, temperature=0.7,
                      max_new_tokens=task.max_solution_chars + 2, grader=task.grade, seed=settings.seed + 7)
    return result["eval/accuracy"]


def _distill_config(settings: DemoSettings, run: DemoRun, seed: int, run_dir: Path, task: ArithmeticTask):
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


@dataclass
class _Stage:
    """What the demo's stages share: the output directory, the tokenizer, the task and its prompt sets."""

    out: Path
    tokenizer: object
    task: ArithmeticTask
    train: list
    prompts: list[dict]
    eval_set: list[dict]
    select_set: list[dict]  # where the student is chosen: held out from training and from eval_set
    progress: bool

    def log(self, text: str) -> None:
        if self.progress:
            print(text)


def _prepare(settings: DemoSettings, progress: bool) -> _Stage:
    """The tokenizer and the task's three sets (SFT examples, distillation prompts, held-out problems), saved."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars would bury the demo's own output
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    task = ArithmeticTask(settings.digits)
    train = task.sample(settings.sft_examples, random.Random(settings.seed))
    prompt_examples = task.sample(4096, random.Random(settings.seed + 1))
    prompts = [{"prompt": e.prompt, "answer": e.answer} for e in prompt_examples]
    eval_set = [{"prompt": e.prompt, "answer": e.answer}
                for e in task.sample(settings.eval_size, random.Random(settings.seed + 2))]
    select_set = [{"prompt": e.prompt, "answer": e.answer}
                  for e in task.sample(settings.select_size, random.Random(settings.seed + 3))]
    write_jsonl(out / "prompts.jsonl", prompt_examples)  # the same prompts, for `oprd train`
    return _Stage(out, tokenizer, task, train, prompts, eval_set, select_set, progress)


def _train_teacher(settings: DemoSettings, stage: _Stage, label: str = "[1/4]") -> dict:
    """SFT of the teacher, keeping candidate students every `candidate_every` steps; the student is the one nearest
    `student_ratio` of the teacher's accuracy on the selection set, searched coarse to fine (oprd.demo.student_choice).
    Both are saved under models/; returns the SFT facts and the choice."""
    stage.log(f"{label} supervised teacher: {settings.sft_steps} steps, a candidate student every "
              f"{settings.candidate_every}")
    model = _model(stage.tokenizer, settings)
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
    _save(model, stage, "teacher")
    choice = _choose_student(settings, stage, model, keeper)
    return {"sft": {"seconds": seconds, "final_loss": losses[-1]}, "student_choice": asdict(choice)}


def _choose_student(settings: DemoSettings, stage: _Stage, teacher, keeper: CandidateKeeper) -> StudentChoice:
    probe = copy.deepcopy(teacher)  # the candidates' architecture, without touching the global RNG

    def accuracy_of(state: dict) -> float:
        probe.load_state_dict(state)
        return _eval(probe, stage.tokenizer, stage.task, stage.select_set, settings)

    teacher_accuracy = _eval(teacher, stage.tokenizer, stage.task, stage.select_set, settings)
    choice, state = choose_student(keeper.states, accuracy_of, teacher_accuracy, settings.student_ratio,
                                   stride=settings.candidate_stride)
    probe.load_state_dict(state)
    _save(probe, stage, "student")
    reached = "" if choice.reached else f" (no candidate reached {settings.student_ratio:g} of it: the best taken)"
    stage.log(f"      student: SFT step {choice.step}, {choice.accuracy:.3f} on the selection set against the "
              f"teacher's {teacher_accuracy:.3f}{reached}")
    return choice


def _save(model, stage: _Stage, name: str, tokenizer=None) -> None:
    """models/`name`: the model and its tokenizer (the demo's own unless given)."""
    model.save_pretrained(stage.out / "models" / name)
    (tokenizer or stage.tokenizer).save_pretrained(stage.out / "models" / name)


def _distill_seeds(settings: DemoSettings, stage: _Stage, run: DemoRun, teacher, acc_student: float,
                   acc_teacher: float, teacher_tokenizer=None) -> dict:
    """One table row: the run over every distillation seed (oprd.demo.seeds)."""
    seeds = [settings.seed + i for i in range(settings.seeds)]
    entries = [_distill(settings, stage, run, seed, teacher, acc_student, acc_teacher, measure_peak=i == 0,
                        teacher_tokenizer=teacher_tokenizer) for i, seed in enumerate(seeds)]
    combined = combine_seeds(entries, seeds)
    stage.log(f"      {run.label}: accuracy {combined['accuracy']:.3f} ± {combined['accuracy_spread']:.3f} over "
              f"{len(seeds)} seeds")
    return combined


def _distill(settings: DemoSettings, stage: _Stage, run: DemoRun, seed: int, teacher, acc_student: float,
             acc_teacher: float, measure_peak: bool, teacher_tokenizer=None) -> dict:
    """One distillation run from the saved student, and its per-seed entry (teacher_tokenizer: the teacher's own,
    when it is not the student's)."""
    run_dir = stage.out / "runs" / run.dir_name / f"seed{seed}"
    config = _distill_config(settings, run, seed, run_dir, stage.task)
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
    return {"seed": seed, "accuracy": final, "gap_closed": _gap(final, acc_student, acc_teacher), "seconds": seconds,
            "seconds_per_step": seconds / settings.distill_steps, "update_delta_peak_mb": peak / 2**20,
            "accuracy_curve": curve, "cosine_curve": cosine, **diagnostics}


def _diagnostics(settings: DemoSettings, stage: _Stage, student, teacher, metrics: list[dict], acc_student: float,
                 acc_teacher: float) -> dict:
    """The trained student's numbers that explain its result (oprd.demo.diagnostics); the head diagnostics need
    the same head shapes (not so for the Bridge demo's wider teacher), the per-layer cosine the same widths."""
    out = {"response_length": _mean_response_length(metrics)}
    unpaired = [m["bridge/unpaired_share"] for m in metrics if "bridge/unpaired_share" in m]
    if unpaired:  # across tokenizers: the share of student positions without a teacher partner
        out["unpaired_share"] = sum(unpaired) / len(unpaired)
    if student.get_output_embeddings().weight.shape != teacher.get_output_embeddings().weight.shape:
        return out
    via_teacher = _eval(decoded_by_teacher(student, teacher), stage.tokenizer, stage.task, stage.eval_set, settings)
    return {**out, "accuracy_teacher_head": via_teacher,
            "gap_closed_teacher_head": _gap(via_teacher, acc_student, acc_teacher),
            "head_distance": head_distance(student, teacher), "cosine_per_layer": final_cosines(metrics)}


def _mean_response_length(metrics: list[dict], last: int = 20) -> float:
    """The mean response length over the last `last` logged steps (the paper saw Bridge answers 2-3x shorter)."""
    lengths = [m["response/length"] for m in metrics if "response/length" in m][-last:]
    return sum(lengths) / len(lengths) if lengths else float("nan")


def run_demo(settings: DemoSettings, progress: bool = True) -> dict:
    """The four stages (module docstring); returns results.json's content."""
    stage = _prepare(settings, progress)
    trained = _train_teacher(settings, stage)
    stage.log("[2/4] evaluating teacher and student")
    teacher = LlamaForCausalLM.from_pretrained(stage.out / "models" / "teacher").eval()
    acc_teacher = _eval(teacher, stage.tokenizer, stage.task, stage.eval_set, settings)
    student = LlamaForCausalLM.from_pretrained(stage.out / "models" / "student")
    acc_student = _eval(student, stage.tokenizer, stage.task, stage.eval_set, settings)
    stage.log(f"      teacher {acc_teacher:.3f}, student {acc_student:.3f}")
    results: dict = {"settings": asdict(settings), "teacher_accuracy": acc_teacher, "student_accuracy": acc_student,
                     "student_head_distance": head_distance(student, teacher), **trained, "methods": {}}
    results["methods"] = distill_runs(settings, stage, settings.runs(), teacher, acc_student, acc_teacher, "[3/4]")
    write_outputs(stage, results, render_tables, plot, "[4/4]")
    return results


def distill_runs(settings: DemoSettings, stage: _Stage, runs: list[DemoRun], teacher, acc_student: float,
                 acc_teacher: float, label: str, teacher_tokenizer=None) -> dict:
    """Every run (a table row) over the seeds, in order: label -> its combined entry."""
    methods = {}
    for i, run in enumerate(runs, start=1):
        stage.log(f"{label} distilling with {run.label} ({i}/{len(runs)})")
        methods[run.label] = _distill_seeds(settings, stage, run, teacher, acc_student, acc_teacher,
                                            teacher_tokenizer)
    return methods


def write_outputs(stage: _Stage, results: dict, render, draw, label: str) -> None:
    """results.json, tables.md (`render(results)`) and plots/ (`draw(results, directory)`), and the tables shown."""
    stage.log(f"{label} tables and plots")
    (stage.out / "results.json").write_text(json.dumps(results, indent=2))
    tables = render(results)
    (stage.out / "tables.md").write_text(tables)
    draw(results, stage.out / "plots")
    stage.log(tables)


def _gap(accuracy: float, student: float, teacher: float) -> float:
    return (accuracy - student) / (teacher - student) if teacher != student else float("nan")


def _update_delta_peak(config, student, teacher, tokenizer, prompts, task, teacher_tokenizer=None) -> int:
    """Delta-peak of one full update (rollout, teacher pass, student pass, loss, backward, step), measured on a copy
    of the student so that the measured run itself is untouched."""
    probe_config = copy.deepcopy(config)
    probe_config.run.dir = str(Path(config.run.dir) / "probe")
    probe = Trainer(probe_config, copy.deepcopy(student), teacher, tokenizer, prompts, grader=task.grade,
                    teacher_tokenizer=teacher_tokenizer)
    _, peak = delta_peak_bytes(probe.train_step, probe.device)
    return peak
