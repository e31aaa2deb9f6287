"""The LIF stage's frequency–current curve: zero below a threshold current, monotone, saturating."""

from __future__ import annotations

import math

import pytest
import torch

from t4dm.spiking import CorticalConfig, LIFNeurons

T = 400


def fi_curve(tau_m: float, currents: torch.Tensor) -> torch.Tensor:
    """Firing rate (spikes per token) of one neuron per constant current, over T tokens."""
    lif = LIFNeurons(CorticalConfig(d_model=8, n_heads=1, tau_m=tau_m, v_threshold=1.0, v_reset=0.0))
    current = currents.float()[None, None, :].expand(1, T, -1).contiguous()
    spikes, _, _ = lif(current)
    return spikes[0].mean(0)


@pytest.mark.parametrize("tau_m", [2.0, 5.0])
def test_fi_curve_threshold_monotone_saturation(tau_m):
    currents = torch.linspace(0.0, 2 * tau_m, 801)
    rate = fi_curve(tau_m, currents)
    # monotone non-decreasing
    assert bool((rate[1:] >= rate[:-1]).all()), "the f-I curve decreases somewhere"
    # threshold (rheobase): the membrane approaches I from below, so I < v_threshold never fires
    assert float(rate[currents < 0.99].max()) == 0.0
    assert bool((rate[currents > 1.01] > 0).all())
    # saturation: one spike per token once a single step from reset crosses threshold, I >= tau_m · v_th
    assert bool((rate[currents >= tau_m] == 1.0).all())
    assert bool((rate[currents < 0.99 * tau_m] < 1.0).all())


def test_fi_curve_matches_the_interspike_interval():
    """Between threshold and saturation the rate is 1 / n, n = ⌈ln(1 − θ/I) / ln(1 − 1/τ)⌉ steps from reset
    to spike (checked away from the steps of the staircase, where rounding decides)."""
    tau_m = 4.0
    currents = torch.linspace(1.05, 3.95, 300)
    rate = fi_curve(tau_m, currents)
    checked = 0
    for current, r in zip(currents.tolist(), rate.tolist(), strict=True):
        n_real = math.log(1 - 1.0 / current) / math.log(1 - 1 / tau_m)
        if abs(n_real - round(n_real)) < 1e-3:
            continue
        n = math.ceil(n_real)
        assert abs(r - (T // n) / T) <= 1.0 / T, (current, r, n)
        checked += 1
    assert checked > 250
