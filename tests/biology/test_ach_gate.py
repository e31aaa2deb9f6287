"""Acetylcholine opens the thalamic gate for novel input more than for familiar input."""

from __future__ import annotations

import itertools

import torch

from t4dm.spiking import CorticalBlock, GlassBox

D = 64


def gate_and_novelty(block: CorticalBlock, x: torch.Tensor, ach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate ``[D]`` and novelty of the last token of ``x`` ``[1, T, D]`` at the given ACh level."""
    levels = torch.tensor([0.0, 0.5, ach, 0.5])
    box = GlassBox(("gate", "novelty"))
    with torch.no_grad(), box.attach(block):
        block(x, levels)
    return box.get(0, "gate")[0, -1], box.get(0, "novelty")[0, -1]


def test_ach_opens_the_gate_for_novel_input():
    torch.manual_seed(0)
    block = CorticalBlock(D, 4)
    probe = torch.randn(D)
    familiar = probe.expand(1, 32, D).clone()  # the probe, seen 31 times before
    novel = torch.randn(1, 32, D)
    novel[0, -1] = probe  # the same probe after 31 unrelated tokens
    differences = []
    for ach in (0.0, 0.25, 0.5, 0.75, 1.0):
        gate_f, nov_f = gate_and_novelty(block, familiar, ach)
        gate_n, nov_n = gate_and_novelty(block, novel, ach)
        assert float(nov_f) < 0.01 and float(nov_n) > 0.5, (float(nov_f), float(nov_n))
        if ach == 0.0:
            assert torch.equal(gate_f, gate_n), "without ACh novelty must not move the gate"
        else:
            assert bool((gate_n > gate_f).all()), (
                "ACh must open the gate more for the novel token on every channel"
            )
        differences.append(float((gate_n - gate_f).mean()))
    assert all(b > a for a, b in itertools.pairwise(differences)), differences
