"""Local plasticity without backpropagation (``t4dm.learning``): pair-based STDP with traces, Hebbian
learning with normalisation, the three-factor rule (eligibility × dopamine), and node perturbation (a
three-factor rule that descends a loss: noise × presynaptic activity × the reward prediction error). Every update is clipped
per synapse and can be written as overlay edge updates (T4DX ``UPDATE_EDGE_WEIGHT``) through
:class:`EdgeWeightSink`. Needs torch. See docs/spiking.md.
"""

from __future__ import annotations

from .bounds import apply_delta_, bound_delta
from .hebbian import Hebbian
from .overlay import EdgeUpdate, EdgeWeightSink, edge_updates, write_edge_updates
from .perturbation import NodePerturbation, PerturbationStep
from .stdp import STDP, STDPState
from .targets import PLASTIC_TARGETS, apply_plasticity_
from .three_factor import ThreeFactor, ThreeFactorState

__all__ = [
    "PLASTIC_TARGETS",
    "STDP",
    "EdgeUpdate",
    "EdgeWeightSink",
    "Hebbian",
    "NodePerturbation",
    "PerturbationStep",
    "STDPState",
    "ThreeFactor",
    "ThreeFactorState",
    "apply_delta_",
    "apply_plasticity_",
    "bound_delta",
    "edge_updates",
    "write_edge_updates",
]
