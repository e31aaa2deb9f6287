"""The parts of the stack: trace scan, neuromodulator bus, oscillator clock, glass box."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from t4dm.spiking import MODULATORS, CorticalStack, GlassBox, NeuromodBus, OscillatorBias, membrane_trace
from t4dm.spiking.glassbox import DEFAULT_KINDS, STACK
from t4dm.spiking.scan import decayed_scan
from tests.spiking.helpers import rel_err, small_stack

# ------------------------------------------------------------------------------------------- scan


@pytest.mark.parametrize(
    ("B", "T", "N", "decay", "with_initial"),
    [(2, 130, 5, 0.9, True), (1, 1, 3, 0.5, True), (3, 63, 4, 0.0, False), (1, 200, 2, 0.999, False)],
    ids=lambda v: str(v),
)
def test_decayed_scan_matches_the_loop(B, T, N, decay, with_initial):
    x = torch.randn(B, T, N, dtype=torch.float64)
    y0 = torch.randn(B, N, dtype=torch.float64) if with_initial else torch.zeros(B, N, dtype=torch.float64)
    y, ref = y0.clone(), []
    for t in range(T):
        y = decay * y + x[:, t]
        ref.append(y)
    out = decayed_scan(x.float(), decay, y0.float() if with_initial else None)
    assert out.dtype == torch.float32 and out.shape == (B, T, N)
    # float32 against a float64 loop: the kernels' float32 tolerance
    assert rel_err(out, torch.stack(ref, 1)) <= 1e-5


# ------------------------------------------------------------------------------------------- bus


def test_bus_set_get_and_levels_per_block():
    bus = NeuromodBus(3)
    assert bus.as_dict() == {"dopamine": [0.0] * 3, "norepinephrine": [0.5] * 3,
                             "acetylcholine": [0.5] * 3, "serotonin": [0.5] * 3}  # fmt: skip
    bus.set("ACh", 0.9, block=1)
    bus.set("5-HT", torch.tensor([0.1, 0.2, 0.3]))
    bus.set("Dopamine", -0.5)
    assert float(bus.get("acetylcholine", 1)) == pytest.approx(0.9)
    assert bus.get("acetylcholine").tolist() == pytest.approx([0.5, 0.9, 0.5])
    assert bus.get("serotonin").tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert bus.get("da").tolist() == pytest.approx([-0.5] * 3)
    assert MODULATORS == ("dopamine", "norepinephrine", "acetylcholine", "serotonin")
    bus.reset()
    assert bus.get("ACh").tolist() == pytest.approx([0.5] * 3)


def test_bus_follows_signals():
    bus = NeuromodBus(2, rate=0.5, rate_reward=0.5, pe_ref=1.0)
    bus.observe(novelty=1.0)
    assert bus.get("ACh").tolist() == pytest.approx([0.75, 0.75])  # 0.5 + 0.5 (1 − 0.5)
    bus.observe(novelty=torch.tensor([0.0, 1.0]))
    assert bus.get("ACh").tolist() == pytest.approx([0.375, 0.875])
    bus.observe(prediction_error=3.0)  # surprise 3 / (3 + 1) = 0.75
    assert bus.get("NE").tolist() == pytest.approx([0.625, 0.625])
    bus.observe(reward=1.0)  # δ = 1 − 0
    assert bus.get("DA").tolist() == pytest.approx([math.tanh(1.0)] * 2)
    assert bus.expected_reward.tolist() == pytest.approx([0.5, 0.5])
    sigma = 1 / (1 + math.exp(-1.0))
    assert bus.get("5-HT").tolist() == pytest.approx([0.5 + 0.5 * (sigma - 0.5)] * 2)


def test_stack_signals_feed_the_bus():
    stack = small_stack(2, 32, 4)
    out = stack(torch.randn(1, 16, 32), torch.randn(1, 32))
    means = out.signal_means()
    stack.bus.observe(novelty=means["novelty"], prediction_error=means["prediction_error"])
    assert stack.bus.levels.shape == (2, 4)
    assert not torch.equal(stack.bus.get("ACh"), torch.full((2,), 0.5))


# ------------------------------------------------------------------------------------------- oscillator


def test_oscillator_bias_formula_and_theta_peak():
    osc = OscillatorBias(
        token_ms=5.0, theta_hz=6.0, theta_amp=0.2, gamma_amp=0.0, delta_amp=0.0, theta_phase=0.3
    )
    T = 2000
    bias = osc(torch.tensor(0), T).numpy()
    n = np.arange(T)
    np.testing.assert_allclose(bias, 0.2 * np.cos(2 * np.pi * 6.0 * n * 0.005 + 0.3), atol=1e-6)
    spectrum = np.abs(np.fft.rfft(bias))
    freqs = np.fft.rfftfreq(T, d=0.005)
    assert freqs[spectrum.argmax()] == pytest.approx(6.0, abs=0.5)
    assert osc.phase(1000)["theta"] == pytest.approx((2 * np.pi * 6.0 * 5.0 + 0.3) % (2 * np.pi))


def test_oscillator_chunks_are_bit_exact():
    osc = OscillatorBias()
    whole = osc(torch.tensor(1_000_000), 300)
    parts = [osc(torch.tensor(1_000_000 + s), n) for s, n in ((0, 1), (1, 150), (151, 149))]
    assert torch.equal(torch.cat(parts), whole)


def test_oscillator_survives_a_bfloat16_cast():
    stack = CorticalStack(1, 32, 4).to(torch.bfloat16)
    assert torch.equal(stack.oscillator(torch.tensor(7), 10), OscillatorBias()(torch.tensor(7), 10))


# ------------------------------------------------------------------------------------------- glass box


def test_glass_box_records_and_detaches():
    stack = small_stack(2, 32, 4)
    x = torch.randn(2, 10, 32)
    box = GlassBox((*DEFAULT_KINDS, "membrane", "current"))
    with box.attach(stack):
        first = stack(x[:, :4], torch.randn(2, 32), return_state=True)
        stack(x[:, 4:], state=first.state)
    assert stack.recorder is None and all(b.recorder is None for b in stack.blocks)
    assert box.blocks() == [0, 1]
    for block in (0, 1):
        assert box.get(block, "spikes").shape == (2, 10, 32)
        assert box.get(block, "qk_spikes").shape == (2, 10, 64)
        assert box.get(block, "gate").shape == (2, 10, 32)
        assert box.get(block, "novelty").shape == (2, 10)
        assert box.get(block, "levels").shape == (2, 4)  # two calls
        spikes, h = box.get(block, "spikes"), box.get(block, "membrane")
        # the replayed membrane crosses the threshold exactly where the kernel spiked
        assert torch.equal(h >= 1.0, spikes.bool())
    assert box.get(STACK, "oscillator").shape == (10,)
    before = len(box._data)
    stack(x)  # not attached: nothing recorded
    assert len(box._data) == before


def test_membrane_trace_matches_the_lif_stage():
    stack = small_stack(1, 16, 2)
    lif = stack.blocks[0].lif
    current = torch.randn(3, 40, 16) * 2
    v0 = torch.rand(3, 16)
    spikes, v_final, received = lif(current, v0)
    h = membrane_trace(received, spikes, v0, lif.tau, lif.v_threshold, lif.v_reset)
    assert torch.equal(h >= lif.v_threshold, spikes.bool())
    last = h[:, -1] * (1 - spikes[:, -1])
    assert torch.equal(last, v_final)


def test_glass_box_errors():
    box = GlassBox(("spikes",))
    with pytest.raises(ValueError, match="kind"):
        box.get(0, "gate")
    with pytest.raises(ValueError, match="block"):
        box.get(0, "spikes")
    with pytest.raises(ValueError, match="module"), box.attach(torch.nn.Linear(2, 2)):
        pass
