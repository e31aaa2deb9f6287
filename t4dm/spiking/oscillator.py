"""θ, γ and δ oscillations as a phase bias on the LIF thresholds, clocked per token."""

from __future__ import annotations

import math

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .config import check_number

__all__ = ["BANDS", "OscillatorBias"]

#: Band name → (lowest, highest) frequency in Hz.
BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "gamma": (30.0, 80.0)}


class OscillatorBias(nn.Module):
    """The threshold bias of token ``n`` (a count of tokens since the start of the stream)::

        b(n) = Σ_band A_band · cos(2π · f_band · n · token_ms / 1000 + φ_band)

    Args:
        token_ms: the clock: milliseconds per token (> 0). Every frequency must stay below the Nyquist
            limit ``500 / token_ms`` Hz (gamma at 80 Hz needs token_ms < 6.25).
        delta_hz, theta_hz, gamma_hz: frequencies, each inside its band (δ 0.5–4, θ 4–8, γ 30–80 Hz).
        delta_amp, theta_amp, gamma_amp: amplitudes in threshold units (>= 0; 0 switches a band off).
        delta_phase, theta_phase, gamma_phase: phases at token 0, radians.

    The phase is a function of the integer token count, computed in float64, so a stream cut into chunks
    (the count carried in the state) gets bit-for-bit the bias of the whole sequence.

    How the bias reaches the neurons: the LIF kernel takes one scalar threshold per call, so the bias enters
    as a hyperpolarising current ``−b(n)`` added to the input. With ``decay_input=True`` the membrane's
    steady state for a constant input ``x`` is ``x``, so this equals raising the threshold to ``θ + b(n)``
    for inputs that vary slowly against the membrane time constant (exact for a constant bias without
    spikes; after a reset the membrane re-approaches the shifted steady state within a few τ_m).
    """

    def __init__(
        self,
        *,
        token_ms: float = 5.0,
        delta_hz: float = 2.0,
        theta_hz: float = 6.0,
        gamma_hz: float = 40.0,
        delta_amp: float = 0.05,
        theta_amp: float = 0.1,
        gamma_amp: float = 0.05,
        delta_phase: float = 0.0,
        theta_phase: float = 0.0,
        gamma_phase: float = 0.0,
    ) -> None:
        super().__init__()
        self.token_ms = check_number("token_ms", token_ms, low=0.0, low_open=True)
        nyquist = 500.0 / self.token_ms
        freqs = {"delta": delta_hz, "theta": theta_hz, "gamma": gamma_hz}
        amps = {"delta": delta_amp, "theta": theta_amp, "gamma": gamma_amp}
        phases = {"delta": delta_phase, "theta": theta_phase, "gamma": gamma_phase}
        for band, (low, high) in BANDS.items():
            f = check_number(f"{band}_hz", freqs[band], low=low, high=high)
            if f >= nyquist:
                raise InvalidInput(
                    f"{band}_hz", f, f"must be below the Nyquist limit 500 / token_ms = {nyquist:g} Hz"
                )
            check_number(f"{band}_amp", amps[band], low=0.0)
            check_number(f"{band}_phase", phases[band])
        self.frequencies = {band: float(freqs[band]) for band in BANDS}
        self.omegas = tuple(2.0 * math.pi * float(freqs[b]) * self.token_ms / 1000.0 for b in BANDS)
        self.phases = tuple(float(phases[b]) for b in BANDS)
        self.amplitudes = tuple(float(amps[b]) for b in BANDS)
        self._make_constants(None)

    def _make_constants(self, device: torch.device | None) -> None:
        # (re)built from the Python floats: module.to(torch.bfloat16) must not round the clock's constants
        self.register_buffer(
            "_omegas", torch.tensor(self.omegas, dtype=torch.float64, device=device), persistent=False
        )
        self.register_buffer(
            "_phases", torch.tensor(self.phases, dtype=torch.float64, device=device), persistent=False
        )
        self.register_buffer(
            "_amplitudes", torch.tensor(self.amplitudes, dtype=torch.float32, device=device), persistent=False
        )

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self._make_constants(self._omegas.device)
        return self

    def forward(self, clock: torch.Tensor, T: int) -> torch.Tensor:
        """The bias float32 of tokens ``clock, …, clock + T − 1``: ``[T]`` for a 0-dim int64 ``clock``, ``[B, T]``
        for a clock per row ``[B]`` (rows of a left-padded batch have seen different numbers of tokens)."""
        n = clock.to(torch.float64)[..., None] + torch.arange(T, device=clock.device, dtype=torch.float64)
        angle = n[..., None] * self._omegas + self._phases  # [T, 3] or [B, T, 3], float64
        return (torch.cos(angle).float() * self._amplitudes).sum(-1)

    def phase(self, clock: torch.Tensor | int) -> dict[str, float]:
        """The phase of each band at token ``clock``, in [0, 2π) (for the glass box)."""
        n = float(clock)
        return {band: (n * self.omegas[i] + self.phases[i]) % (2.0 * math.pi) for i, band in enumerate(BANDS)}

    def extra_repr(self) -> str:
        f = ", ".join(f"{b}={hz:g}Hz" for b, hz in self.frequencies.items())
        return f"token_ms={self.token_ms:g}, {f}"
