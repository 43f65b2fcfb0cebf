"""OPRD in TRL: `oprd.integrations.trl.OPRDTrainer` (TRL's on-policy DistillationTrainer with oprd's objective)
distilling a tiny random Llama teacher into a shallower student on the embedded arithmetic prompts. No downloads.
Run: python examples/trl_oprd.py [--steps N] [--out DIR]        (needs `pip install 'oprd[trl]'`)

With real models, pass their directories or hub ids as TRL does (`model=`, `teacher_model=`), a dataset with a
"prompt" column, and a DistillationConfig with your batch sizes, `max_completion_length`, vLLM or not, and the
accelerate launcher of your choice; the objective is the one argument TRL does not have.
"""

from __future__ import annotations

import argparse
import random

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import DistillationConfig

from oprd.integrations.trl import OPRDTrainer
from oprd.objective import ObjectiveSpec
from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import build_char_tokenizer


def tiny_llama(tokenizer, layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="trl-oprd-run")
    args = parser.parse_args(argv)
    tokenizer = build_char_tokenizer()
    prompts = Dataset.from_list([{"prompt": e.prompt} for e in ArithmeticTask(2).sample(256, random.Random(0))])
    config = DistillationConfig(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8,
                                gradient_accumulation_steps=2, max_completion_length=12, learning_rate=1e-3,
                                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = OPRDTrainer(model=tiny_llama(tokenizer, 2, 0), teacher_model=tiny_llama(tokenizer, 4, 1), args=config,
                          train_dataset=prompts, processing_class=tokenizer,
                          objective=ObjectiveSpec(method="oprd", layers="all", positions="last_k", k=8))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss/oprd" in h]
    for h in logged:
        print(f"step {h['step']}: loss/oprd {h['loss/oprd']:.4f}, rep/cosine_similarity "
              f"{h['rep/cosine_similarity']:.3f}")
    return logged


if __name__ == "__main__":
    main()
