"""What the demo's stages share: the output directory, the character tokenizer, the arithmetic task and its prompt
sets (`Stage`, made by `prepare`); the tiny Llama every model of the demo is (`new_model`), saved under models/;
and the accuracy and share of the gap closed every table reports."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oprd.demo.settings import DemoSettings
from oprd.tasks import ArithmeticTask, write_jsonl
from oprd.tasks.tokenizers import build_char_tokenizer
from oprd.train.evaluate import evaluate


@dataclass
class Stage:
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


def prepare(settings: DemoSettings, progress: bool) -> Stage:
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
    return Stage(out, tokenizer, task, train, prompts, eval_set, select_set, progress)


def new_model(tokenizer, settings: DemoSettings) -> LlamaForCausalLM:
    """A freshly initialised `settings.layers` x `settings.hidden` Llama for `tokenizer` (seeded)."""
    torch.manual_seed(settings.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=settings.hidden, intermediate_size=2 * settings.hidden,
                         num_hidden_layers=settings.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def accuracy(model, tokenizer, task, examples, settings) -> float:
    """avg@k exact match of `model` on `examples` (the eval settings of the demo, its own seed)."""
    result = evaluate(model, tokenizer, examples, samples=settings.eval_samples, temperature=0.7,
                      max_new_tokens=task.max_solution_chars + 2, grader=task.grade, seed=settings.seed + 7)
    return result["eval/accuracy"]


def save_model(model, stage: Stage, name: str, tokenizer=None) -> None:
    """models/`name`: the model and its tokenizer (the demo's own unless given)."""
    model.save_pretrained(stage.out / "models" / name)
    (tokenizer or stage.tokenizer).save_pretrained(stage.out / "models" / name)


def gap_closed(score: float, student: float, teacher: float) -> float:
    """The share of the student-teacher gap an accuracy of `score` closes (NaN when there is no gap)."""
    return (score - student) / (teacher - student) if teacher != student else float("nan")
