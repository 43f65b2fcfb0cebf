"""Which layers an objective reads, for one student-teacher pair (LayerPlan)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from oprd.bridge.file import Bridge, check_bridge_fits
from oprd.capture import decoder_parts
from oprd.layers import hidden_state_pairs, resolve_layers
from oprd.objective.pairing import check_widths, hidden_size
from oprd.objective.spec import ObjectiveSpec


@dataclass(frozen=True)
class LayerPlan:
    """Student hidden_states indices, the unique teacher indices cached, and the cache layer of each student layer."""

    student: list[int]
    teacher: list[int]
    layer_map: list[int]
    same_width: bool = True  # the two models' hidden states can be compared (the cosine diagnostic needs it)
    bridge: Bridge | None = None  # the Bridge methods' projections (the teacher cache then holds P_T (h - mu_T))


def plan_layers(spec: ObjectiveSpec, student: nn.Module, teacher: nn.Module, bridge: Bridge | None = None) -> LayerPlan:
    """The layers of `spec` for this pair. A pair of different widths is refused for OPRD-Vanilla (it aligns the
    states directly) and trains OPD without the cosine diagnostic, which has no meaning across widths. The Bridge
    methods align `oprd.layers` through `bridge` (fitted for this pair and at least these layers, else
    BridgeFileError)."""
    s_width, t_width = hidden_size(student.config), hidden_size(teacher.config)
    check_widths(spec.method, s_width, t_width)
    num_s = decoder_parts(student).num_layers
    num_t = decoder_parts(teacher).num_layers
    s_layers = resolve_layers(spec.layers, num_s)
    if spec.uses_bridge:
        if bridge is None:
            raise ValueError(f"method {spec.method!r} needs a bridge file: set `bridge.path` (written by "
                             f"`oprd bridge fit`)")
        check_bridge_fits(bridge, student, teacher, s_layers)
        bridge = bridge.restricted_to(s_layers) if s_layers != bridge.student_layers else bridge
        return LayerPlan(bridge.student_layers, bridge.teacher_layers, bridge.layer_map, s_width == t_width, bridge)
    paired = hidden_state_pairs(s_layers, num_s, num_t)
    t_layers = sorted(set(paired))
    return LayerPlan(s_layers, t_layers, [t_layers.index(t) for t in paired], s_width == t_width)
