"""The τ(t) write gate: whether a new memory is stored, and with what initial strength.

    τ = σ(λ_ε·ε + λ_Δ·novelty + λ_r·reward + bias)

``ε`` is the prediction error (surprise: a language model's token loss, or any non-negative signal the
caller has), ``novelty`` the cosine distance from the nearest stored memory of the same scope (0 for a
copy, 1 for an unrelated one), ``reward`` a signed outcome. A write is stored when ``τ > threshold``.

With the defaults (``bias = 0``, ``threshold = 0.5``) a write that carries no surprise, no novelty and no
reward is refused — the store already knows it — and anything new, surprising or rewarded passes;
a negative reward can veto a write. The unified model uses the same gate with its token loss as ε.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from t4dm.errors import InvalidInput

__all__ = ["GateDecision", "WriteGate"]


def _finite(name: str, value: object, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInput(name, value, "expected a finite number")
    if low is not None and value < low:
        raise InvalidInput(name, value, f"expected a number >= {low}")
    return float(value)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate said about one write: ``tau`` in (0, 1), ``store`` (τ > threshold), and its inputs."""

    tau: float
    store: bool
    surprise: float
    novelty: float
    reward: float


@dataclass(frozen=True, slots=True)
class WriteGate:
    """τ(t) = σ(λ_ε·ε + λ_Δ·novelty + λ_r·reward + bias); store when τ > ``threshold``.

    ``threshold = 0`` stores everything (τ still records each write's initial strength).
    """

    lambda_surprise: float = 1.0
    lambda_novelty: float = 4.0
    lambda_reward: float = 2.0
    bias: float = 0.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lambda_surprise", "lambda_novelty", "lambda_reward"):
            _finite(name, getattr(self, name), low=0.0)
        _finite("bias", self.bias)
        threshold = _finite("threshold", self.threshold, low=0.0)
        if threshold >= 1.0:
            raise InvalidInput("threshold", threshold, "expected a number in [0, 1): τ is below 1")

    def tau(self, surprise: float = 0.0, novelty: float = 0.0, reward: float = 0.0) -> float:
        """σ(λ_ε·ε + λ_Δ·novelty + λ_r·reward + bias)."""
        z = (
            self.lambda_surprise * surprise
            + self.lambda_novelty * novelty
            + self.lambda_reward * reward
            + self.bias
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def decide(self, surprise: float = 0.0, novelty: float = 0.0, reward: float = 0.0) -> GateDecision:
        """Check the inputs (``surprise`` ≥ 0, ``novelty`` in [0, 2], ``reward`` any finite number) and
        decide."""
        surprise = _finite("surprise", surprise, low=0.0)
        novelty = _finite("novelty", novelty, low=0.0)
        if novelty > 2.0 + 1e-6:
            raise InvalidInput("novelty", novelty, "a cosine distance is at most 2")
        reward = _finite("reward", reward)
        tau = self.tau(surprise, novelty, reward)
        return GateDecision(tau, tau > self.threshold, surprise, novelty, reward)
