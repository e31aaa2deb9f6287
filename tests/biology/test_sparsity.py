"""Firing sparsity at initialisation: every population of every block fires 1–30 % of the time."""

from __future__ import annotations

import pytest
import torch

from t4dm.spiking import CorticalStack, GlassBox


def firing_rates(d_model: int, n_heads: int, T: int, context: bool, scale: float) -> dict[str, float]:
    torch.manual_seed(0)
    stack = CorticalStack(6, d_model, n_heads)
    x = torch.randn(2, T, d_model) * scale
    ctx = torch.randn(2, T, d_model) if context else None
    box = GlassBox(("spikes", "qk_spikes"))
    with torch.no_grad(), box.attach(stack):
        stack(x, ctx)
    return {f"block {b} {k}": float(box.get(b, k).mean()) for b in range(6) for k in ("spikes", "qk_spikes")}


@pytest.mark.parametrize(
    ("context", "scale"), [(False, 1.0), (True, 1.0), (True, 30.0)], ids=["plain", "context", "loud-input"]
)
def test_sparsity_at_init(context, scale):
    rates = firing_rates(128, 4, 64, context, scale)
    outside = {k: v for k, v in rates.items() if not 0.01 <= v <= 0.30}
    assert not outside, f"firing rates outside 1-30 %: {outside}"


@pytest.mark.slow
def test_sparsity_at_issue_width():
    rates = firing_rates(1024, 16, 64, True, 1.0)
    outside = {k: v for k, v in rates.items() if not 0.01 <= v <= 0.30}
    assert not outside, f"firing rates outside 1-30 %: {outside}"
