"""Hebbian plasticity with normalisation (Oja's rule, or Hebb followed by row renormalisation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t4dm.errors import InvalidInput
from t4dm.spiking.config import check_number

from .bounds import apply_delta_, bound_delta, check_activity

__all__ = ["Hebbian"]

RULES = ("oja", "renormalize")


@dataclass(frozen=True)
class Hebbian:
    """Rate-based Hebbian learning for a weight ``W`` ``[N_post, N_pre]`` with ``post = W pre``.

    - ``"oja"``: ``ΔW = η (⟨y xᵀ⟩ − diag⟨y²⟩ W)`` (Oja 1982): Hebb's product with a decay that keeps every
      row's norm near 1; a row converges to the principal direction of its input.
    - ``"renormalize"``: ``W' = normalise_rows(W + η ⟨y xᵀ⟩)`` to each row's norm before the update.

    ``⟨·⟩`` averages over batch and time. The change is clipped to ``±max_delta`` per synapse.
    """

    learning_rate: float = 1e-3
    rule: str = "oja"
    max_delta: float = 0.01

    def __post_init__(self) -> None:
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("max_delta", self.max_delta, low=0.0, low_open=True)
        if self.rule not in RULES:
            raise InvalidInput("rule", self.rule, f"must be one of {list(RULES)}")

    def delta(self, pre: torch.Tensor, post: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``ΔW`` ``[N_post, N_pre]`` float32 for activities ``pre`` ``[B, T, N_pre]``, ``post``
        ``[B, T, N_post]`` (or ``[T, N]``) and the current ``weight``."""
        x = check_activity("pre", pre).float()
        y = check_activity("post", post, x.shape[0], x.shape[1]).float()
        w = weight.detach().float()
        if tuple(w.shape) != (y.shape[2], x.shape[2]):
            raise InvalidInput(
                "weight", tuple(w.shape), f"must be [N_post, N_pre] = {(y.shape[2], x.shape[2])}"
            )
        n = x.shape[0] * x.shape[1]
        hebb = torch.einsum("bti,btj->ij", y, x) / n
        if self.rule == "oja":
            dw = self.learning_rate * (hebb - (y.square().sum((0, 1)) / n)[:, None] * w)
        else:
            grown = w + self.learning_rate * hebb
            norms = w.norm(dim=1, keepdim=True) / grown.norm(dim=1, keepdim=True).clamp_min(1e-12)
            dw = grown * norms - w
        return bound_delta(dw, self.max_delta)

    def apply_(self, weight: torch.Tensor, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """Compute the update and add it to ``weight`` in place; returns ``ΔW``."""
        dw = self.delta(pre, post, weight)
        apply_delta_(weight, dw)
        return dw
