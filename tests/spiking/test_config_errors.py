"""Bad configurations and inputs raise InvalidInput (a ValueError) naming the parameter and the value."""

from __future__ import annotations

import pytest
import torch

from t4dm.errors import InvalidInput
from t4dm.learning import STDP, Hebbian, ThreeFactor
from t4dm.spiking import CorticalBlock, CorticalConfig, CorticalStack, GlassBox, NeuromodBus, OscillatorBias


def raises(field: str, value_text: str | None = None):
    """pytest.raises(InvalidInput) that also checks the field name (and the value) in the error."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(InvalidInput)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            error = self.info.value
            assert isinstance(error, ValueError)
            assert error.field == field, f"error names {error.field!r}, expected {field!r}: {error}"
            assert str(error).startswith(f"{field}="), str(error)
            if value_text is not None:
                assert value_text in str(error), str(error)
            return suppressed

    return _Check()


@pytest.mark.parametrize(
    ("kwargs", "field", "value_text"),
    [
        pytest.param({"d_model": 1000, "n_heads": 16}, "n_heads", "16", id="d_model-not-divisible-by-heads"),
        pytest.param({"d_model": 0}, "d_model", "0", id="d_model-zero"),
        pytest.param({"n_heads": 2.0}, "n_heads", "2.0", id="n_heads-float"),
        pytest.param({"tau_m": -2.0}, "tau_m", "-2.0", id="negative-membrane-tau"),
        pytest.param({"tau_m": 1.0}, "tau_m", "1.0", id="membrane-tau-one"),
        pytest.param({"familiarity_tau": -5.0}, "familiarity_tau", "-5.0", id="negative-familiarity-tau"),
        pytest.param({"attention_window": (-1.0, 8.0)}, "attention_window", "-1.0", id="negative-window"),
        pytest.param({"attention_window": (16.0, 8.0)}, "attention_window", "16.0", id="window-reversed"),
        pytest.param({"v_threshold": 0.0}, "v_threshold", "0.0", id="threshold-zero"),
        pytest.param({"v_reset": 2.0}, "v_reset", "2.0", id="reset-above-threshold"),
        pytest.param({"surrogate": "relu"}, "surrogate", "relu", id="unknown-surrogate"),
        pytest.param({"tau_m": float("nan")}, "tau_m", "nan", id="nan-tau"),
        pytest.param({"kappa_ne": -1.0}, "kappa_ne", "-1.0", id="negative-kappa"),
        pytest.param({"gate_rank": 0}, "gate_rank", "0", id="gate-rank-zero"),
        pytest.param({"d_modle": 64}, "d_modle", "64", id="unknown-field"),
    ],
)
def test_bad_block_config(kwargs, field, value_text):
    with raises(field, value_text):
        CorticalBlock(**{"d_model": 64, "n_heads": 4, **kwargs})


def test_bad_stack_and_bus_config():
    with raises("n_blocks", "0"):
        CorticalStack(0, 32, 4)
    with raises("n_heads", "3"):
        CorticalStack(2, 32, 3)
    with raises("rate", "1.5"):
        NeuromodBus(2, rate=1.5)
    with raises("block", "5"):
        NeuromodBus(2).get("ACh", 5)
    with raises("kwargs"):
        CorticalBlock(config=CorticalConfig(d_model=32, n_heads=4), tau_m=3.0)


@pytest.mark.parametrize("name", ["oxytocin", "DOPA", "", "histamine"])
def test_unknown_neuromodulator(name):
    bus = NeuromodBus(3)
    before = bus.levels.clone()
    with raises("modulator", repr(name)):
        bus.set(name, 0.5)
    with raises("modulator"):
        bus.get(name)
    assert torch.equal(bus.levels, before)


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("acetylcholine", 1.5, "acetylcholine"),
        ("dopamine", -2.0, "dopamine"),
        ("5-HT", float("nan"), "serotonin"),
    ],
)
def test_level_out_of_range_changes_nothing(name, value, field):
    bus = NeuromodBus(2)
    before = bus.levels.clone()
    with raises(field):
        bus.set(name, value)
    with raises(field):
        bus.set(name, torch.tensor([0.5, value]))
    assert torch.equal(bus.levels, before)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"theta_hz": 12.0}, "theta_hz"),
        ({"gamma_hz": 20.0}, "gamma_hz"),
        ({"delta_hz": 0.1}, "delta_hz"),
        ({"token_ms": -1.0}, "token_ms"),
        ({"token_ms": 10.0, "gamma_hz": 60.0}, "gamma_hz"),  # Nyquist at 10 ms per token: 50 Hz
        ({"theta_amp": -0.1}, "theta_amp"),
    ],
    ids=[
        "theta-out-of-band",
        "gamma-out-of-band",
        "delta-out-of-band",
        "negative-clock",
        "nyquist",
        "negative-amp",
    ],
)
def test_bad_oscillator(kwargs, field):
    with raises(field):
        OscillatorBias(**kwargs)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: STDP(tau_plus=-20.0), "tau_plus"),
        (lambda: STDP(tau_minus=0.0), "tau_minus"),
        (lambda: STDP(a_plus=-0.1), "a_plus"),
        (lambda: ThreeFactor(tau_eligibility=-1.0), "tau_eligibility"),
        (lambda: ThreeFactor(stdp="stdp"), "stdp"),
        (lambda: Hebbian(rule="bcm"), "rule"),
        (lambda: Hebbian(learning_rate=-1.0), "learning_rate"),
    ],
    ids=[
        "stdp-tau-plus",
        "stdp-tau-minus",
        "stdp-amplitude",
        "eligibility-tau",
        "three-factor-stdp",
        "hebb-rule",
        "hebb-lr",
    ],
)
def test_bad_plasticity_config(make, field):
    with raises(field):
        make()


def test_bad_inputs_to_the_stack():
    stack = CorticalStack(2, 32, 4)
    x = torch.randn(2, 5, 32)
    with raises("x"):
        stack(torch.randn(2, 5, 16))
    with raises("x"):
        stack(torch.randn(5, 32))
    with raises("x"):
        stack(torch.ones(2, 5, 32, dtype=torch.int64))
    with raises("context"):
        stack(x, torch.randn(2, 5, 16))
    with raises("context"):
        stack(x, torch.randn(3, 32))
    with raises("novelty"):
        stack(x, novelty=torch.rand(2, 4))
    state = stack(x, return_state=True).state
    with raises("state"):
        stack(torch.randn(3, 5, 32), state=state)
    with raises("record"):
        GlassBox(("spikes", "dendrites"))
