"""The distillation losses a user would reach for instead of ours, as loss-path methods (bench_loss_path.py).

  liger-rkl   Liger-Kernel's LigerFusedLinearJSDLoss with beta = 1: the reverse KL(student || teacher) over the full
              vocabulary from the final hidden states and the LM-head weights, in row chunks (its chunk_size, 1024
              rows), each chunk's gradient from torch.func; backend `compiled` (Liger's default, torch.compile of the
              chunk step) or `eager`. Same value as naive-full and fused-full.
  liger-jsd   the same class at beta = 0.5, the generalised JSD that TRL's GKD trainer uses by default.
  trl-gkd     TRL's GKDTrainer.generalized_jsd_loss (beta = 0.5) on materialised logits (F.linear of both heads):
              what GKD runs. Same value as liger-jsd, and as our fused-jsd (bench_loss_path.py), which the summary
              sets against liger-jsd as it sets fused-full against liger-rkl.

Both libraries are optional (`pip install 'oprd[peers]'` for Liger; TRL comes with `oprd[trl]`): a missing one
leaves rows with metric "skipped" and the reason, printed. Every peer's loss is checked against its counterpart in
the run (`reference`). Hard-loss weight 0 and soft-loss weight 1, so Liger returns the divergence alone, averaged
over the rows like ours.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

JSD_BETA = 0.5  # TRL GKD's default
FASTEST = ("liger-rkl", "compiled")  # (name, backend): the fastest peer at our fused full-vocabulary loss's task
FASTEST_JSD = ("liger-jsd", "compiled")  # ... and at our fused generalised JSD's (beta = JSD_BETA)
JSD_METHODS = ("fused-jsd", "liger-jsd", "trl-gkd")  # the methods computing the generalised JSD at JSD_BETA


def baseline_for(method: str) -> tuple[str, str]:
    """The fastest peer at the loss `method` computes: a ratio is only meaningful between two of the same loss."""
    return FASTEST_JSD if method in JSD_METHODS else FASTEST


@dataclass(frozen=True)
class Peer:
    name: str
    backend: str
    module: str  # the import that must succeed
    install: str  # how to get it
    build: Callable  # (inputs) -> the method's forward+backward, returning the detached loss
    reference: str | None  # "name/backend" whose loss it must equal
    runs: str = "always"  # "always", "full" (not in smoke runs: compiling takes longer than the smoke run) or "smoke"


def _liger(beta: float, compiled: bool) -> Callable:
    def build(inp) -> Callable[[], torch.Tensor]:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, compiled=compiled)
        labels = torch.zeros(inp.hidden.shape[0], dtype=torch.long, device=inp.hidden.device)  # none ignored

        def run():
            loss = loss_fn(inp.hidden, inp.weight, inp.t_hidden, inp.t_weight, labels)
            torch.autograd.grad(loss, (inp.hidden, inp.weight))
            return loss.detach()
        return run
    return build


def _trl_gkd(inp) -> Callable[[], torch.Tensor]:
    from trl.experimental.gkd import GKDTrainer

    def run():
        student_logits = F.linear(inp.hidden, inp.weight)
        with torch.no_grad():
            teacher_logits = F.linear(inp.t_hidden, inp.t_weight)
        # [N, V] logits: "batchmean" divides by N, the mean over rows
        loss = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=JSD_BETA)
        torch.autograd.grad(loss, (inp.hidden, inp.weight))
        return loss.detach()
    return run


LIGER = ("liger_kernel.chunked_loss", "pip install 'oprd[peers]'")
TRL = ("trl.experimental.gkd", "pip install 'oprd[trl]'")
PEERS = [
    Peer("liger-rkl", "compiled", *LIGER, _liger(1.0, True), "naive-full/eager", runs="full"),
    Peer("liger-rkl", "eager", *LIGER, _liger(1.0, False), "naive-full/eager"),
    Peer("trl-gkd", "eager", *TRL, _trl_gkd, None),
    Peer("liger-jsd", "compiled", *LIGER, _liger(JSD_BETA, True), "trl-gkd/eager", runs="full"),
    Peer("liger-jsd", "eager", *LIGER, _liger(JSD_BETA, False), "trl-gkd/eager", runs="smoke"),
]


def unavailable_reason(peer: Peer) -> str | None:
    """None when the peer's library imports, else why not and how to install it."""
    try:
        importlib.import_module(peer.module)
    except ImportError as exc:
        return f"{peer.module} not importable ({exc}); {peer.install}"
    return None


def peers(smoke: bool) -> list[Peer]:
    """The peers a smoke run (meaning only) or a full run (timing) measures."""
    return [p for p in PEERS if p.runs in ("always", "smoke" if smoke else "full")]
