"""Node perturbation: a three-factor rule that descends a loss without backpropagation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from t4dm.errors import InvalidInput
from t4dm.spiking.config import check_number

from .bounds import apply_delta_, bound_delta

__all__ = ["NodePerturbation", "PerturbationStep"]


class PerturbationStep(NamedTuple):
    """One update: ``delta`` (the Δw applied, ``[out, in]`` float32), ``rpe`` (the reward prediction error
    ``δ``), and the losses of the two perturbed passes."""

    delta: torch.Tensor
    rpe: float
    loss_plus: float
    loss_minus: float


@dataclass(frozen=True)
class NodePerturbation:
    """Node perturbation (Williams 1992; Fiete & Seung 2006) on one linear layer's output::

        ξ ~ N(0, σ²)                          noise on the layer's output, one draw per token and unit
        e  = Σ_{b,t} ξ_bt x_btᵀ / σ²          eligibility: perturbation × presynaptic activity x
        δ  = (L(−ξ) − L(+ξ)) / 2              reward prediction error: how much the noise lowered the loss
        Δw = η · g · δ · e                    g: a neuromodulator gain (dopamine), 1 by default

    clipped to ``±max_delta`` per synapse. To first order ``L(±ξ) = L ± Σ ∂L/∂y · ξ``, so ``E[δ e] = −∂L/∂W``:
    the rule descends the loss in expectation, with only the layer's own input, its own noise and one
    scalar broadcast signal (no backpropagated error). The two passes with opposite noise (antithetic
    sampling) cancel the second-order term and need no separate baseline pass. It is much noisier than the
    gradient (its variance grows with the number of perturbed units): expect many more steps than backprop.
    """

    sigma: float = 0.05
    learning_rate: float = 1e-3
    max_delta: float = 0.01

    def __post_init__(self) -> None:
        check_number("sigma", self.sigma, low=0.0, low_open=True)
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("max_delta", self.max_delta, low=0.0, low_open=True)

    @torch.no_grad()
    def step(
        self,
        layer: nn.Linear,
        loss: Callable[[], Any],
        *,
        gain: float = 1.0,
        generator: torch.Generator | None = None,
        w_bound: float | None = None,
    ) -> PerturbationStep:
        """Run ``loss()`` (a scalar: a tensor or a number) twice with opposite noise on ``layer``'s output,
        update ``layer.weight`` in place and return the step. ``layer`` may run several times inside one
        ``loss()`` (each call gets its own noise, the same in both passes)."""
        if not isinstance(layer, nn.Linear):
            raise InvalidInput("layer", type(layer).__name__, "must be a torch.nn.Linear")
        gain = check_number("gain", gain)
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (noise, input) per call of the layer
        sign = 1.0
        index = 0

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            nonlocal index
            if sign > 0:
                if generator is None:  # the global RNG of the output's device
                    noise = torch.randn(output.shape, dtype=torch.float32, device=output.device)
                else:
                    noise = torch.randn(output.shape, generator=generator, dtype=torch.float32,
                                        device=generator.device).to(output.device)  # fmt: skip
                calls.append((noise, args[0].detach()))
            elif index >= len(calls):
                raise RuntimeError("the layer ran more often in the second pass than in the first")
            noise = calls[index][0]
            index += 1
            return output + (sign * self.sigma * noise).to(output.dtype)

        handle = layer.register_forward_hook(hook)
        try:
            loss_plus = float(loss())
            sign, index = -1.0, 0
            loss_minus = float(loss())
        finally:
            handle.remove()
        if not calls:
            raise RuntimeError("loss() never ran the layer: nothing to perturb")
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            raise RuntimeError(f"a perturbed pass gave a non-finite loss ({loss_plus}, {loss_minus})")
        rpe = (loss_minus - loss_plus) / 2.0
        eligibility = torch.zeros_like(layer.weight, dtype=torch.float32)
        for noise, x in calls:
            eligibility += noise.reshape(-1, noise.shape[-1]).T @ x.reshape(-1, x.shape[-1]).float()
        eligibility /= self.sigma  # (σ ξ̂) xᵀ / σ² with ξ̂ the unit noise drawn above
        delta = bound_delta(self.learning_rate * gain * rpe * eligibility, self.max_delta)
        apply_delta_(layer.weight, delta, w_bound=w_bound)
        return PerturbationStep(delta, rpe, loss_plus, loss_minus)
