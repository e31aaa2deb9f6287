"""Dopamine: the third factor scales plasticity, and it signals a reward *prediction error*."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from t4dm.learning import STDP, ThreeFactor
from t4dm.spiking import NeuromodBus


def causal_pairs(T: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre neurons fire 3 tokens before post neurons, repeatedly."""
    pre, post = torch.zeros(1, T, 4), torch.zeros(1, T, 3)
    pre[0, 5:30:6, :2] = 1.0
    post[0, 8:33:6, 0] = 1.0
    post[0, 2:30:7, 1:] = 1.0
    return pre, post


def test_dopamine_scales_the_three_factor_update():
    rule = ThreeFactor(stdp=STDP(tau_plus=8.0, tau_minus=8.0), tau_eligibility=50.0, max_delta=1e9)
    pre, post = causal_pairs()
    unit, _ = rule.delta(pre, post, dopamine=1.0)
    assert float(unit.abs().max()) > 0
    for da in (-1.0, -0.5, 0.25, 0.5, 0.9):
        dw, _ = rule.delta(pre, post, dopamine=da)
        assert torch.allclose(dw, da * unit, rtol=1e-6, atol=0.0), da
    zero, _ = rule.delta(pre, post, dopamine=0.0)
    assert float(zero.abs().max()) == 0.0
    assert float(unit[0, 0]) > 0, "pre-before-post pairs rewarded by dopamine must potentiate"
    punished, _ = rule.delta(pre, post, dopamine=-1.0)
    assert float(punished[0, 0]) < 0


def test_late_dopamine_finds_a_decayed_eligibility():
    """Dopamine k tokens after the pairings (no spikes in between) gives exp(−k/τ_e) of the update."""
    tau_e = 30.0
    rule = ThreeFactor(stdp=STDP(tau_plus=8.0, tau_minus=8.0), tau_eligibility=tau_e, max_delta=1e9)
    pre, post = causal_pairs()
    immediate, state = rule.delta(pre, post, dopamine=1.0)
    k = 45
    late, _ = rule.delta(torch.zeros(1, k, 4), torch.zeros(1, k, 3), dopamine=1.0, state=state)
    assert torch.allclose(late, math.exp(-k / tau_e) * immediate, rtol=1e-5, atol=0.0)


def test_dopamine_is_a_reward_prediction_error():
    """A reward that keeps coming is predicted (dopamine fades); omitting it then gives a dip (Schultz)."""
    bus = NeuromodBus(1, rate_reward=0.2)
    responses = []
    for _ in range(30):
        bus.observe(reward=1.0)
        responses.append(float(bus.get("dopamine", 0)))
    assert responses[0] == pytest.approx(math.tanh(1.0))
    assert all(b < a for a, b in itertools.pairwise(responses))
    assert responses[-1] < 0.01
    bus.observe(reward=0.0)
    assert float(bus.get("dopamine", 0)) < -0.7
