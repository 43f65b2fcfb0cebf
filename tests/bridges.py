"""Random but well-formed bridges for tests: orthonormal P_T rows, a small mean, a random P_S, for any model pair."""

from __future__ import annotations

import torch

from oprd.bridge import Bridge, ModelIdentity
from oprd.capture import decoder_parts
from oprd.layers import hidden_state_pairs, resolve_layers


def random_bridge(student, teacher, rank: int = 4, layers="all", seed: int = 0) -> Bridge:
    g = torch.Generator().manual_seed(seed)
    num_s, num_t = decoder_parts(student).num_layers, decoder_parts(teacher).num_layers
    s_layers = resolve_layers(layers, num_s)
    paired = hidden_state_pairs(s_layers, num_s, num_t)
    t_layers = sorted(set(paired))
    d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
    proj_t = torch.stack([torch.linalg.qr(torch.randn(d_t, rank, generator=g))[0].T for _ in t_layers])
    mean_t = 0.1 * torch.randn(len(t_layers), d_t, generator=g)
    proj_s = torch.randn(len(s_layers), rank, d_s, generator=g) / d_s ** 0.5
    return Bridge(rank, s_layers, t_layers, [t_layers.index(t) for t in paired], proj_t, mean_t, proj_s,
                  ModelIdentity.of(student, "student"), ModelIdentity.of(teacher, "teacher"))


def bridge_for(spec, student, teacher):
    """The bridge a Bridge method's plan needs (None for the other methods)."""
    return random_bridge(student, teacher, layers=spec.layers) if spec.uses_bridge else None
