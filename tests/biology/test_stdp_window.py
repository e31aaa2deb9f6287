"""The STDP window: pre-before-post potentiates, post-before-pre depresses, with the configured τ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t4dm.learning import STDP

T, T0 = 160, 70


def pairing(rule: STDP, dt: int) -> float:
    """Δw of one synapse for one pre spike at T0 and one post spike at T0 + dt."""
    pre, post = torch.zeros(1, T, 1), torch.zeros(1, T, 1)
    pre[0, T0, 0] = 1.0
    post[0, T0 + dt, 0] = 1.0
    dw, _ = rule.delta(pre, post, bound=False)
    return float(dw[0, 0])


@pytest.mark.parametrize(("tau_plus", "tau_minus"), [(10.0, 25.0), (30.0, 15.0)])
def test_stdp_window_shape_and_time_constants(tau_plus, tau_minus):
    rule = STDP(tau_plus=tau_plus, tau_minus=tau_minus, a_plus=0.01, a_minus=0.012)
    lags = np.arange(1, 61)
    ltp = np.array([pairing(rule, int(d)) for d in lags])
    ltd = np.array([pairing(rule, -int(d)) for d in lags])
    assert (ltp > 0).all(), "pre-before-post must potentiate"
    assert (ltd < 0).all(), "post-before-pre must depress"
    assert pairing(rule, 0) == 0.0
    np.testing.assert_allclose(ltp, 0.01 * np.exp(-lags / tau_plus), rtol=1e-5)
    np.testing.assert_allclose(ltd, -0.012 * np.exp(-lags / tau_minus), rtol=1e-5)
    # the time constants read back from the window: slope of log|Δw| against the lag
    fitted_plus = -1.0 / np.polyfit(lags, np.log(ltp), 1)[0]
    fitted_minus = -1.0 / np.polyfit(lags, np.log(-ltd), 1)[0]
    assert fitted_plus == pytest.approx(tau_plus, rel=1e-3)
    assert fitted_minus == pytest.approx(tau_minus, rel=1e-3)
