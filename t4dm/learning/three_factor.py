"""The three-factor rule: an STDP eligibility trace turned into a weight change by dopamine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from t4dm.errors import InvalidInput
from t4dm.spiking.config import check_number

from .bounds import bound_delta
from .stdp import STDP, STDPState

__all__ = ["ThreeFactor", "ThreeFactorState"]


class ThreeFactorState(NamedTuple):
    """The STDP traces and the eligibility ``[B, N_post, N_pre]`` (float32) after the last step."""

    stdp: STDPState
    eligibility: torch.Tensor


@dataclass(frozen=True)
class ThreeFactor:
    """Eligibility trace × dopamine (Izhikevich 2007; Frémaux & Gerstner 2016), times in tokens::

        e(t) = e^{−1/τ_e} · e(t−1) + c(t)          c(t): the STDP pairing term of step t (see STDP)
        Δw   = η · mean_b( DA_b · e_b(T−1) )       at the end of the chunk, when the dopamine arrives

    clipped to ``±max_delta`` per synapse. ``DA`` is the dopamine level (a number, a 0-dim tensor, or one per
    batch row ``[B]``; the bus keeps it in [−1, 1]): positive dopamine writes the eligible pairings in,
    negative reverses them, zero leaves the weights alone. The eligibility carries over in the state, so
    dopamine that arrives chunks later still finds the pairings that preceded it, decayed.
    """

    stdp: STDP = field(default_factory=STDP)
    tau_eligibility: float = 100.0
    learning_rate: float = 1.0
    max_delta: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.stdp, STDP):
            raise InvalidInput("stdp", type(self.stdp).__name__, "must be an STDP")
        check_number("tau_eligibility", self.tau_eligibility, low=0.0, low_open=True)
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("max_delta", self.max_delta, low=0.0, low_open=True)

    def eligibility(
        self, pre: torch.Tensor, post: torch.Tensor, state: ThreeFactorState | None = None
    ) -> ThreeFactorState:
        """The state after ``pre`` ``[B, T, N_pre]`` / ``post`` ``[B, T, N_post]``: ``e(T−1)`` per batch row."""
        T = pre.shape[-2]
        decay = math.exp(-1.0 / self.tau_eligibility)
        steps = torch.arange(T - 1, -1, -1, device=pre.device, dtype=torch.float32)
        weights = torch.pow(torch.tensor(decay, device=pre.device), steps)  # decay^(T-1-t)
        pairing, stdp_state = self.stdp.pairing(pre, post, None if state is None else state.stdp, weights)
        if state is not None:
            if tuple(state.eligibility.shape) != tuple(pairing.shape):
                raise InvalidInput(
                    "state", tuple(state.eligibility.shape), f"eligibility must be {tuple(pairing.shape)}"
                )
            pairing = pairing + decay**T * state.eligibility
        return ThreeFactorState(stdp_state, pairing)

    def delta(
        self,
        pre: torch.Tensor,
        post: torch.Tensor,
        dopamine: float | torch.Tensor,
        state: ThreeFactorState | None = None,
    ) -> tuple[torch.Tensor, ThreeFactorState]:
        """``(Δw [N_post, N_pre] float32, new state)``."""
        new_state = self.eligibility(pre, post, state)
        e = new_state.eligibility
        if isinstance(dopamine, (int, float)) and not isinstance(dopamine, bool):
            da = e.new_full((e.shape[0],), check_number("dopamine", dopamine))
        elif isinstance(dopamine, torch.Tensor) and (
            dopamine.dim() == 0 or tuple(dopamine.shape) == (e.shape[0],)
        ):
            da = dopamine.detach().to(device=e.device, dtype=torch.float32).expand(e.shape[0])
        else:
            what = tuple(dopamine.shape) if isinstance(dopamine, torch.Tensor) else dopamine
            raise InvalidInput(
                "dopamine", what, f"must be a number or a tensor of shape () or [B] = [{e.shape[0]}]"
            )
        dw = self.learning_rate * torch.einsum("b,bij->ij", da, e) / e.shape[0]
        return bound_delta(dw, self.max_delta), new_state
