"""The student's optimizer and schedule: its optimizer for each `optim.param_dtype` / `optim.optimizer` (the memory
settings, docs/trainer.md, "Memory plan"), whether `optim.gradient_checkpointing` turns checkpointing on, and the
learning rate's warm-up and cosine decay (`warmup_cosine`).

- fp32 weights, `adamw`: torch's AdamW, its fused kernel where it applies, else foreach (`adamw_kernel`; 16 bytes
  per parameter with its gradient and two fp32 moments).
- bf16 weights, `adamw`: `BF16AdamW`, fp32 moments over bf16 weights (12 bytes per parameter). The update is computed
  in fp32 and written back with stochastic rounding, so updates far below a bf16 ulp still move the weight in
  expectation instead of vanishing (Zamirai et al. 2020). The rounding draws from a generator seeded by the step and
  the parameter's index, never from the global random stream: replicas on several ranks round alike, and a resumed run
  rounds as the uninterrupted one.
- `adamw_8bit`: torchao's AdamW8bit (block-quantised 8-bit moments; with bf16 weights, 6 bytes per parameter), with
  its own bf16 stochastic rounding. torchao is an optional dependency (`pip install 'oprd[lowbit]'`).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adamw_8bit")
_CHUNK = 1 << 20  # elements BF16AdamW updates at a time (its fp32 temporaries: ~7 x 4 MB)
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def stochastic_round_to_bf16(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 `values` rounded to bf16 up or down at random, with the chance of rounding up equal to the fraction of a
    bf16 ulp the value lies above the lower neighbour (unbiased: the expectation is the fp32 value)."""
    bits = values.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, values.shape, generator=generator, dtype=torch.int32, device=values.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # the low 16 bits dropped: exact in bf16


class BF16AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch's formulas) for bf16 parameters with fp32 moments and stochastic rounding
    of the updated weights. `seed`: the base of the rounding generators."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.seed = seed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                local = _local(p)  # an FSDP2 shard updates its own part
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(local, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(local, dtype=torch.float32)
                state["step"] += 1
                step = int(state["step"])
                generator = torch.Generator(device=local.device).manual_seed(
                    (self.seed * 1_000_003 + step) * 65_537 + index)
                # in chunks: the fp32 temporaries of a 545M-parameter embedding would otherwise take ~15 GB
                flat = [t.view(-1) for t in (local, state["exp_avg"], state["exp_avg_sq"])]  # views: updated in place
                for part, avg, avg_sq, grad in zip(*(t.split(_CHUNK) for t in (*flat, _local(p.grad).reshape(-1)))):
                    grad, weight = grad.float(), part.float()
                    weight.mul_(1 - lr * decay)
                    avg.lerp_(grad, 1 - beta1)
                    avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
                    weight.addcdiv_(avg, denom, value=-lr / (1 - beta1 ** step))
                    part.copy_(stochastic_round_to_bf16(weight, generator) if part.dtype == torch.bfloat16
                               else weight)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, with the moments kept fp32 (torch's Optimizer casts them to the bf16 parameter's dtype)."""
        moments = {pid: {k: v for k, v in state.items() if k != "step"} for pid, state in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            for pid, p in zip(saved["params"], group["params"]):
                for key, value in moments.get(pid, {}).items():
                    self.state[p][key] = value.to(device=_local(p).device, dtype=torch.float32, copy=True)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def build_optimizer(parameters: Iterable[nn.Parameter], name: str, *, lr: float, betas, weight_decay: float,
                    seed: int) -> torch.optim.Optimizer:
    """The optimizer `optim.optimizer` names, for parameters of the dtype `optim.param_dtype` gave them."""
    params = list(parameters)
    bf16 = any(p.dtype == torch.bfloat16 for p in params)
    if name == "adamw_8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError as exc:
            raise ValueError(f"config: `optim.optimizer` 'adamw_8bit' needs torchao (pip install 'oprd[lowbit]'); "
                             f"importing it failed: {exc}") from None
        return AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, bf16_stochastic_round=bf16)
    if name != "adamw":
        raise ValueError(f"config: `optim.optimizer` must be one of {list(OPTIMIZERS)}; got {name!r}")
    if bf16:
        return BF16AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, seed=seed)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **adamw_kernel(params))


def adamw_kernel(params: list[nn.Parameter]) -> dict:
    """torch AdamW's fused kernel (one pass over every parameter) where it applies: plain fp32 tensors, all on CPU or
    all on one CUDA device; else the foreach kernel (FSDP2's DTensors). Both compute the for-loop's update
    (tests/test_optim_kernels.py); the for-loop default, a Python loop over the parameters, is the slow one on CPU."""
    plain = all(type(p) in (torch.Tensor, nn.Parameter) and p.dtype == torch.float32 for p in params)
    devices = {p.device for p in params}
    if plain and len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda"):
        return {"fused": True}
    return {"foreach": True}


CHECKPOINTING_FROM = 1_000_000_000  # "auto" checkpoints students of at least this many parameters


def uses_gradient_checkpointing(setting: str, model: nn.Module) -> bool:
    """`optim.gradient_checkpointing`: "on", "off", or "auto" (on from CHECKPOINTING_FROM parameters: a 7B student's
    saved activations are ~6 MB per token without it, docs/trainer.md)."""
    if setting == "auto":
        return sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_FROM
    return setting == "on"


def warmup_cosine(steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over ceil(warmup_ratio * steps) steps, then cosine decay to 0 at `steps`."""
    warmup = math.ceil(warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor
