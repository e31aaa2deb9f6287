"""Pair-based spike-timing-dependent plasticity with pre- and postsynaptic traces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from t4dm.errors import InvalidInput
from t4dm.spiking.config import check_number
from t4dm.spiking.scan import decayed_scan

from .bounds import bound_delta, check_activity

__all__ = ["STDP", "STDPState"]


class STDPState(NamedTuple):
    """Inclusive traces after the last step: ``pre`` ``[B, N_pre]``, ``post`` ``[B, N_post]`` (float32)."""

    pre: torch.Tensor
    post: torch.Tensor


@dataclass(frozen=True)
class STDP:
    """Pair-based STDP (all-to-all pairings) on spike trains, times in tokens.

    With the traces of *earlier* spikes ``x_pre(t) = Σ_{s<t} e^{−(t−s)/τ₊} s_pre(s)`` and
    ``y_post(t) = Σ_{s<t} e^{−(t−s)/τ₋} s_post(s)``::

        Δw_ij = Σ_t [ A₊ · s_post,i(t) · x_pre,j(t)  −  A₋ · y_post,i(t) · s_pre,j(t) ]

    so one pre spike ``Δt = t_post − t_pre`` tokens before a post spike adds ``A₊ e^{−Δt/τ₊}`` (potentiation)
    and one after it adds ``−A₋ e^{−|Δt|/τ₋}`` (depression); simultaneous spikes add nothing. Summed over
    time, averaged over the batch, then clipped to ``±max_delta`` per synapse. ``Δw`` is ``[N_post, N_pre]``,
    the layout of an ``nn.Linear`` weight from the pre to the post population.
    """

    tau_plus: float = 20.0
    tau_minus: float = 20.0
    a_plus: float = 0.01
    a_minus: float = 0.012
    max_delta: float = 0.01

    def __post_init__(self) -> None:
        for name in ("tau_plus", "tau_minus", "max_delta"):
            check_number(name, getattr(self, name), low=0.0, low_open=True)
        for name in ("a_plus", "a_minus"):
            check_number(name, getattr(self, name), low=0.0)

    def window(self, dt: float) -> float:
        """The weight change of one pairing with ``dt = t_post − t_pre`` tokens (before clipping)."""
        if dt > 0:
            return self.a_plus * math.exp(-dt / self.tau_plus)
        if dt < 0:
            return -self.a_minus * math.exp(dt / self.tau_minus)
        return 0.0

    def init_state(
        self, batch_size: int, n_pre: int, n_post: int, device: torch.device | str | None = None
    ) -> STDPState:
        return STDPState(
            torch.zeros(batch_size, n_pre, device=device), torch.zeros(batch_size, n_post, device=device)
        )

    def traces(
        self, pre: torch.Tensor, post: torch.Tensor, state: STDPState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, STDPState]:
        """``(x_pre [B, T, N_pre], y_post [B, T, N_post], new state)``: traces of strictly earlier spikes."""
        pre = check_activity("pre", pre)
        post = check_activity("post", post, pre.shape[0], pre.shape[1])
        B = pre.shape[0]
        if state is not None and (
            tuple(state.pre.shape) != (B, pre.shape[2]) or tuple(state.post.shape) != (B, post.shape[2])
        ):
            raise InvalidInput("state", (tuple(state.pre.shape), tuple(state.post.shape)),
                               f"must hold traces [B, N_pre] = {(B, pre.shape[2])} and [B, N_post] = {(B, post.shape[2])}")  # fmt: skip
        decay_plus = math.exp(-1.0 / self.tau_plus)
        decay_minus = math.exp(-1.0 / self.tau_minus)
        pre0 = None if state is None else state.pre
        post0 = None if state is None else state.post
        pre_incl = decayed_scan(pre, decay_plus, pre0)  # includes s(t)
        post_incl = decayed_scan(post, decay_minus, post0)
        zeros_pre = pre.new_zeros(B, 1, pre.shape[2], dtype=torch.float32)
        zeros_post = pre.new_zeros(B, 1, post.shape[2], dtype=torch.float32)
        pre_before = torch.cat([zeros_pre if pre0 is None else pre0.float()[:, None], pre_incl[:, :-1]], 1)
        post_before = torch.cat(
            [zeros_post if post0 is None else post0.float()[:, None], post_incl[:, :-1]], 1
        )
        x_pre = decay_plus * pre_before
        y_post = decay_minus * post_before
        return x_pre, y_post, STDPState(pre_incl[:, -1], post_incl[:, -1])

    def pairing(
        self,
        pre: torch.Tensor,
        post: torch.Tensor,
        state: STDPState | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, STDPState]:
        """The unclipped pairing sum per batch row, ``[B, N_post, N_pre]`` float32, each step ``t`` weighted
        by ``weights[t]`` (``[T]``; all ones when None), and the new state."""
        x_pre, y_post, new_state = self.traces(pre, post, state)
        s_pre, s_post = check_activity("pre", pre).float(), check_activity("post", post).float()
        if weights is not None:
            s_post = s_post * weights[None, :, None]
            y_post = y_post * weights[None, :, None]
        ltp = torch.einsum("bti,btj->bij", s_post, x_pre)
        ltd = torch.einsum("bti,btj->bij", y_post, s_pre)
        return self.a_plus * ltp - self.a_minus * ltd, new_state

    def delta(
        self, pre: torch.Tensor, post: torch.Tensor, state: STDPState | None = None, *, bound: bool = True
    ) -> tuple[torch.Tensor, STDPState]:
        """``(Δw [N_post, N_pre] float32, new state)`` for spike trains ``pre`` ``[B, T, N_pre]`` and ``post``
        ``[B, T, N_post]`` (or ``[T, N]``), continuing from ``state``. ``bound=False`` skips the clipping
        (chunks of a stream then sum to the whole sequence's update)."""
        pairing, new_state = self.pairing(pre, post, state)
        dw = pairing.mean(0)
        return (bound_delta(dw, self.max_delta) if bound else dw), new_state
