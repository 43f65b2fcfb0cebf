"""How rollouts are made: the batch layout every other part reads (`batch.Rollouts`), the seam the trainer samples
through (`engine`: `Sampling`, `RolloutEngine`) and one file per engine (`hf`: Hugging Face `generate`;
`vllm_engine`: vLLM in this process; `vllm_server`: a vLLM server; `vllm_settings`: their checks), prompt encoding in
each tokenizer's chat template (`prompt_format`), and prompt files and the seeded order they are consumed in
(`prompts`). vLLM is imported only when a vLLM engine is built.

It may import `parallel` (whether a model is sharded) and nothing else of `oprd`; `objective`, `bridge`,
`integrations`, `train` and above import it.
"""

from oprd.rollout.batch import Rollouts, concat_rollouts, eos_token_ids, response_mask_from
from oprd.rollout.hf import encode_prompts, generate_rollouts

__all__ = ["Rollouts", "concat_rollouts", "encode_prompts", "eos_token_ids", "generate_rollouts",
           "response_mask_from"]
