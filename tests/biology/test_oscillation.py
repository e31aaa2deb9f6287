"""The θ oscillation biases the thresholds: neurons fire more in its troughs than at its peaks."""

from __future__ import annotations

import torch

from t4dm.spiking import CorticalConfig, LIFNeurons, OscillatorBias


def test_theta_phase_modulates_firing():
    torch.manual_seed(0)
    osc = OscillatorBias(token_ms=5.0, theta_hz=6.0, theta_amp=0.3, gamma_amp=0.0, delta_amp=0.0)
    T = 2000
    bias = osc(torch.tensor(0), T)
    lif = LIFNeurons(CorticalConfig(d_model=8, n_heads=1))
    current = torch.randn(1, T, 512) * 1.5
    spikes, _, _ = lif(current, None, bias)
    rate = spikes[0].mean(-1)  # per token
    trough, peak = rate[bias < -0.2].mean(), rate[bias > 0.2].mean()
    assert float(trough) > 1.5 * float(peak), (float(trough), float(peak))
    unbiased, _, _ = lif(current)
    assert float(unbiased.mean()) > float(peak) and float(unbiased.mean()) < float(trough)
