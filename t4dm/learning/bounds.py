"""Bounds shared by the plasticity rules: every update is clipped per synapse before it is applied."""

from __future__ import annotations

import torch

from t4dm.errors import InvalidInput

__all__ = ["apply_delta_", "bound_delta", "check_activity"]


def bound_delta(delta: torch.Tensor, max_delta: float) -> torch.Tensor:
    """``delta`` clipped to ``[−max_delta, max_delta]`` per synapse."""
    return delta.clamp(-max_delta, max_delta)


@torch.no_grad()
def apply_delta_(weight: torch.Tensor, delta: torch.Tensor, *, w_bound: float | None = None) -> torch.Tensor:
    """Add ``delta`` to ``weight`` in place (no autograd), then clip ``|w| <= w_bound`` if given.

    ``weight`` ``[N_post, N_pre]`` (an ``nn.Linear`` weight is ``[out, in]``); returns ``weight``.
    """
    if tuple(delta.shape) != tuple(weight.shape):
        raise InvalidInput("delta", tuple(delta.shape), f"must have the weight's shape {tuple(weight.shape)}")
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    if w_bound is not None:
        weight.clamp_(-w_bound, w_bound)
    return weight


def check_activity(name: str, x: object, B: int | None = None, T: int | None = None) -> torch.Tensor:
    """``x`` as a ``[B, T, N]`` floating tensor (a ``[T, N]`` tensor is one batch row)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InvalidInput(name, type(x).__name__, "must be a floating tensor [B, T, N] or [T, N]")
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or min(x.shape) < 1:
        raise InvalidInput(name, tuple(x.shape), "must have shape [B, T, N] or [T, N], non-empty")
    if B is not None and (x.shape[0], x.shape[1]) != (B, T):
        raise InvalidInput(name, tuple(x.shape), f"must have the same batch and time sizes as pre ({B}, {T})")
    return x
