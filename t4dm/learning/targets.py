"""Local plasticity on a cortical block's weights, from what the glass box recorded."""

from __future__ import annotations

import torch

from t4dm.errors import InvalidInput
from t4dm.spiking.block import CorticalBlock
from t4dm.spiking.glassbox import GlassBox

from .bounds import apply_delta_
from .stdp import STDP, STDPState
from .three_factor import ThreeFactor, ThreeFactorState

__all__ = ["PLASTIC_TARGETS", "apply_plasticity_"]

#: Block weights with spiking populations on both sides: name → (weight attribute path, pre kind, post kind).
PLASTIC_TARGETS = {
    # stage ② spikes [B, T, D] → stage ③ q|k spikes [B, T, 2D]; weight [2D, D]
    "attention.qk_proj": ("attention.qk_proj.weight", "spikes", "qk_spikes"),
}


def _weight(block: CorticalBlock, path: str) -> torch.Tensor:
    module = block
    *parents, leaf = path.split(".")
    for name in parents:
        module = getattr(module, name)
    return getattr(module, leaf)


def apply_plasticity_(
    block: CorticalBlock,
    rule: STDP | ThreeFactor,
    box: GlassBox,
    *,
    target: str = "attention.qk_proj",
    dopamine: float | torch.Tensor | None = None,
    state: STDPState | ThreeFactorState | None = None,
    w_bound: float | None = None,
) -> tuple[torch.Tensor, STDPState | ThreeFactorState]:
    """Apply ``rule`` to ``block``'s ``target`` weight in place, with the pre/post spikes ``box`` recorded
    for this block (record ``spikes`` and ``qk_spikes``), and return ``(Δw, new rule state)``.

    A :class:`ThreeFactor` rule needs ``dopamine`` (e.g. ``stack.bus.get("dopamine", block.index)``).
    """
    if target not in PLASTIC_TARGETS:
        raise InvalidInput("target", target, f"must be one of {sorted(PLASTIC_TARGETS)}")
    path, pre_kind, post_kind = PLASTIC_TARGETS[target]
    pre = box.get(block.index, pre_kind)
    post = box.get(block.index, post_kind)
    if isinstance(rule, ThreeFactor):
        if dopamine is None:
            raise InvalidInput("dopamine", None, "a ThreeFactor rule needs the dopamine level")
        dw, new_state = rule.delta(pre, post, dopamine, state)  # type: ignore[arg-type]
    elif isinstance(rule, STDP):
        dw, new_state = rule.delta(pre, post, state)  # type: ignore[arg-type]
    else:
        raise InvalidInput("rule", type(rule).__name__, "must be an STDP or ThreeFactor rule")
    apply_delta_(_weight(block, path), dw, w_bound=w_bound)
    return dw, new_state
