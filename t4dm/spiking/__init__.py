"""Spiking cortical stack (``t4dm.spiking``): six-stage cortical blocks, the neuromodulator bus, θ/γ/δ
oscillations and glass-box recording, on the kernels of :mod:`t4dm.kernels`. Needs torch.

    from t4dm.spiking import CorticalStack
    stack = CorticalStack(n_blocks=6, d_model=1024, n_heads=16)
    out = stack(x, context)                            # x [B, T, D] → out.hidden [B, T, D]
    out = stack(x_chunk, state=state, return_state=True)  # streaming: out.state for the next chunk
    decoder = StackDecoder(stack, out.state)             # token by token, one CUDA graph per step on CUDA

See docs/spiking.md.
"""

from __future__ import annotations

from .block import BlockSignals, BlockState, CorticalBlock
from .config import CorticalConfig
from .decoder import StackDecoder
from .glassbox import DEFAULT_KINDS, KINDS, LAYER_KINDS, GlassBox, membrane_trace
from .neuromod import MODULATORS, NeuromodBus
from .ops import KERNEL_OPS, SpikingOps
from .oscillator import BANDS, OscillatorBias
from .stack import CorticalStack, StackOutput, StackState, parameter_count
from .stages import (
    ApicalModulation,
    LIFNeurons,
    NoveltyDetector,
    RWKVRecurrence,
    SpikeAttention,
    ThalamicGate,
    forward_forward_loss,
)

__all__ = [
    "BANDS",
    "DEFAULT_KINDS",
    "KERNEL_OPS",
    "KINDS",
    "LAYER_KINDS",
    "MODULATORS",
    "ApicalModulation",
    "BlockSignals",
    "BlockState",
    "CorticalBlock",
    "CorticalConfig",
    "CorticalStack",
    "GlassBox",
    "LIFNeurons",
    "NeuromodBus",
    "NoveltyDetector",
    "OscillatorBias",
    "RWKVRecurrence",
    "SpikeAttention",
    "SpikingOps",
    "StackDecoder",
    "StackOutput",
    "StackState",
    "ThalamicGate",
    "forward_forward_loss",
    "membrane_trace",
    "parameter_count",
]
