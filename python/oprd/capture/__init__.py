"""Hidden states from Hugging Face decoders for OPRD: a lean student pass and a truncated teacher pass.

- `capture_student`: runs the decoder without its LM head (with gradients) and returns the selected layers'
  hidden states as the model computed them, references and not copies, in HF `hidden_states` indexing. Blocks after
  the deepest selected layer do not run, unless the post-norm final state is asked for (for a fused LM-head loss).
- `teacher_cache`: runs the teacher without gradients and stops right after the deepest selected layer. It keeps
  only the selected rows of the selected layers, in a compact [L_sel, N_sel, D] cache (bf16 by default), or their
  Bridge projections [L_sel, N_sel, r]. Nothing else of the teacher pass survives it.

An FSDP2 model (`torch.distributed.fsdp.fully_shard`, as `oprd.parallel.sharding` wraps it) runs through its root
module's forward instead, whole, so that FSDP's hooks gather and release the parameters as they should (an early stop
would raise inside them); its LM head then computes one position only (`logits_to_keep=1`).

Both take left-padded prompts with right-padded responses (`attention_mask` 0 on padding). Position ids are counted
from the attention mask, as generation counts them, so a left-padded sample sees the positions it was generated with.

Files: `states` (the passes), `taps` (taking each needed layer's output from a running decoder, and stopping it early),
`families` (where each supported HF family keeps its embedding, blocks and final norm). It may import `parallel`
(whether a model is FSDP2-sharded) and the selection modules; `objective`, `bridge`, `integrations`, `train` and above
import it.
"""

from oprd.capture.families import SUPPORTED_FAMILIES, DecoderParts, decoder_parts
from oprd.capture.states import (
    LayerSpec,
    StudentStates,
    capture_student,
    position_ids_from_mask,
    teacher_cache,
    teacher_cache_and_final,
)
from oprd.capture.taps import StopForward, tapped

__all__ = ["SUPPORTED_FAMILIES", "DecoderParts", "LayerSpec", "StopForward", "StudentStates", "capture_student",
           "decoder_parts", "position_ids_from_mask", "tapped", "teacher_cache", "teacher_cache_and_final"]
