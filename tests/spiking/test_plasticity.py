"""Local plasticity rules: streaming, bounds, Hebbian normalisation, overlay edge writes, block targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t4dm.errors import InvalidInput
from t4dm.learning import (
    STDP,
    EdgeWeightSink,
    Hebbian,
    NodePerturbation,
    ThreeFactor,
    apply_plasticity_,
    edge_updates,
    write_edge_updates,
)
from t4dm.spiking import GlassBox
from tests.spiking.helpers import rel_err, small_stack


class InMemoryEdgeSink:
    """The fake of T4DX's UPDATE_EDGE_WEIGHT: accumulates deltas per (src, dst, rel)."""

    def __init__(self) -> None:
        self.weights: dict[tuple[str, str, str], float] = {}
        self.calls: list[tuple[str, str, str, float]] = []

    def update_edge_weight(self, src: str, dst: str, rel: str, *, delta: float) -> None:
        self.calls.append((src, dst, rel, delta))
        self.weights[(src, dst, rel)] = self.weights.get((src, dst, rel), 0.0) + delta


def spike_train(B: int, T: int, N: int, rate: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, N, generator=gen) < rate).float()


def test_stdp_streaming_equals_whole():
    rule = STDP(tau_plus=7.0, tau_minus=13.0)
    pre, post = spike_train(2, 90, 5, 0.2, 0), spike_train(2, 90, 3, 0.2, 1)
    whole, whole_state = rule.delta(pre, post, bound=False)
    total, state = torch.zeros(3, 5), None
    for start, stop in ((0, 1), (1, 40), (40, 90)):
        dw, state = rule.delta(pre[:, start:stop], post[:, start:stop], state, bound=False)
        total += dw
    assert rel_err(total, whole) <= 1e-5
    assert rel_err(state.pre, whole_state.pre) <= 1e-5 and rel_err(state.post, whole_state.post) <= 1e-5


def test_stdp_matches_pairwise_sum():
    """All-to-all pairs: Δw_ij = Σ over (pre spike, post spike) pairs of the window."""
    rule = STDP(tau_plus=5.0, tau_minus=9.0, a_plus=0.3, a_minus=0.2, max_delta=100.0)
    pre, post = spike_train(1, 50, 4, 0.15, 2), spike_train(1, 50, 2, 0.15, 3)
    dw, _ = rule.delta(pre, post)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for i in range(2):
        for j in range(4):
            for tp in post[0, :, i].nonzero().flatten().tolist():
                for tq in pre[0, :, j].nonzero().flatten().tolist():
                    expected[i, j] += rule.window(tp - tq)
    assert rel_err(dw, expected) <= 1e-5


def test_updates_are_bounded():
    rule = STDP(a_plus=1.0, a_minus=1.0, max_delta=0.05)
    dw, _ = rule.delta(spike_train(1, 60, 6, 0.5, 4), spike_train(1, 60, 6, 0.5, 5))
    assert float(dw.abs().max()) == pytest.approx(0.05)
    three = ThreeFactor(stdp=STDP(a_plus=1.0, a_minus=1.0), max_delta=0.02)
    dw, _ = three.delta(spike_train(1, 60, 6, 0.5, 4), spike_train(1, 60, 6, 0.5, 5), dopamine=1.0)
    assert float(dw.abs().max()) == pytest.approx(0.02)


def test_three_factor_streaming_equals_whole():
    rule = ThreeFactor(stdp=STDP(tau_plus=6.0, tau_minus=6.0), tau_eligibility=25.0, max_delta=1e9)
    pre, post = spike_train(2, 70, 4, 0.2, 6), spike_train(2, 70, 3, 0.2, 7)
    whole = rule.eligibility(pre, post)
    state = None
    for start, stop in ((0, 33), (33, 34), (34, 70)):
        state = rule.eligibility(pre[:, start:stop], post[:, start:stop], state)
    assert rel_err(state.eligibility, whole.eligibility) <= 1e-5
    da = torch.tensor([1.0, -0.5])
    dw_whole, _ = rule.delta(pre, post, da)
    expected = (whole.eligibility[0] - 0.5 * whole.eligibility[1]) / 2
    assert rel_err(dw_whole, expected) <= 1e-6


def test_oja_finds_the_principal_direction_with_unit_norm():
    torch.manual_seed(0)
    direction = torch.tensor([3.0, 1.0, 0.5, 0.0])
    direction = direction / direction.norm()
    weight = torch.randn(1, 4) * 0.1
    rule = Hebbian(learning_rate=0.05, rule="oja", max_delta=1.0)
    for _ in range(400):
        x = torch.randn(1, 32, 1) * 2.0 * direction + 0.2 * torch.randn(1, 32, 4)
        y = x @ weight.T
        rule.apply_(weight, x, y)
    assert float(weight.norm()) == pytest.approx(1.0, abs=0.05)
    assert abs(float(weight[0] @ direction)) >= 0.99


def test_renormalized_hebb_keeps_row_norms():
    weight = torch.randn(3, 5)
    norms = weight.norm(dim=1)
    rule = Hebbian(learning_rate=0.5, rule="renormalize", max_delta=10.0)
    x = torch.randn(2, 8, 5)
    rule.apply_(weight, x, x @ weight.T)
    assert torch.allclose(weight.norm(dim=1), norms, rtol=1e-5)


def test_edge_updates_to_the_sink():
    sink = InMemoryEdgeSink()
    assert isinstance(sink, EdgeWeightSink)
    delta = torch.tensor([[0.5, -0.002, 0.0], [1e-9, 0.03, -0.2]], dtype=torch.float64)  # [post, pre]
    written = write_edge_updates(
        sink, delta, ["a", "b", "c"], ["x", "b"], rel="stdp", max_delta=0.1, min_abs=1e-6
    )
    # (b → b) is a self edge: dropped; 0.0 and 1e-9 are below min_abs; 0.5 and -0.2 are clipped to ±0.1
    assert sink.calls == [("a", "x", "stdp", 0.1), ("b", "x", "stdp", -0.002), ("c", "b", "stdp", -0.1)]
    assert written == 3
    write_edge_updates(sink, delta, ["a", "b", "c"], ["x", "b"], rel="stdp", max_delta=0.1)
    assert sink.weights[("a", "x", "stdp")] == pytest.approx(0.2)
    with_self = edge_updates(delta, ["a", "b", "c"], ["x", "b"], rel="hebb", max_delta=1.0, self_edges=True)
    assert ("b", "b", "hebb", 0.03) in [(u.src, u.dst, u.rel, round(u.delta, 6)) for u in with_self]


def test_edge_updates_into_t4dx(tmp_path):
    from t4dm.errors import UnknownId
    from t4dm.storage import T4DX, Edge, Item

    with T4DX.open(tmp_path / "db", dim=4) as db:
        assert isinstance(db, EdgeWeightSink)
        ids = ["a", "b", "c", "x"]
        db.insert([Item(id=i, vector=np.ones(4)) for i in ids])
        db.add_edges([Edge("a", "x", rel="stdp", weight=1.0), Edge("b", "x", rel="stdp", weight=1.0)])
        delta = torch.tensor([[0.5, -0.02]], dtype=torch.float64)  # [post, pre]
        assert write_edge_updates(db, delta, ["a", "b"], ["x"], rel="stdp", max_delta=0.1) == 2
        weights = {e.src: e.weight for e in db.edges("x", direction="in", rel="stdp")}
        assert weights == pytest.approx({"a": 1.1, "b": 0.98})
        # c -> x does not exist: the store refuses the whole call, a -> x is not moved either
        with pytest.raises(UnknownId):
            write_edge_updates(db, torch.tensor([[0.05, 0.05]]), ["a", "c"], ["x"], rel="stdp", max_delta=0.1)
        weights = {e.src: e.weight for e in db.edges("x", direction="in", rel="stdp")}
        assert weights == pytest.approx({"a": 1.1, "b": 0.98})
        db.compact()
    with T4DX.open(tmp_path / "db") as db:
        weights = {e.src: e.weight for e in db.edges("x", direction="in", rel="stdp")}
        assert weights == pytest.approx({"a": 1.1, "b": 0.98})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pre_ids": ["a", "b"]}, "pre_ids"),
        ({"post_ids": ["x"]}, "post_ids"),
        ({"rel": ""}, "rel"),
        ({"delta": torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])}, "delta"),
        ({"max_delta": -1.0}, "max_delta"),
    ],
)
def test_bad_edge_updates_write_nothing(kwargs, field):
    sink = InMemoryEdgeSink()
    args = {"delta": torch.full((2, 3), 0.01), "pre_ids": ["a", "b", "c"], "post_ids": ["x", "y"],
            "rel": "stdp", "max_delta": 0.1, **kwargs}  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        write_edge_updates(sink, args.pop("delta"), args.pop("pre_ids"), args.pop("post_ids"), **args)
    assert info.value.field == field
    assert sink.calls == []
    with pytest.raises(InvalidInput):
        write_edge_updates(object(), torch.zeros(1, 1), ["a"], ["b"], rel="r", max_delta=1.0)


@pytest.mark.parametrize("rule_kind", ["stdp", "three-factor"])
def test_apply_plasticity_to_block_weights(rule_kind):
    stack = small_stack(2, 32, 4)
    block = stack.blocks[1]
    box = GlassBox(("spikes", "qk_spikes"))
    with torch.no_grad(), box.attach(stack):
        stack(torch.randn(2, 30, 32))
    before = block.attention.qk_proj.weight.detach().clone()
    other = stack.blocks[0].attention.qk_proj.weight.detach().clone()
    if rule_kind == "stdp":
        rule = STDP(a_plus=0.05, a_minus=0.05, max_delta=0.01)
        dw, state = apply_plasticity_(block, rule, box)
    else:
        rule = ThreeFactor(max_delta=0.01)
        stack.bus.set("dopamine", 0.8, block=1)
        dw, state = apply_plasticity_(block, rule, box, dopamine=stack.bus.get("dopamine", 1))
        assert state.eligibility.shape == (2, 64, 32)
    assert dw.shape == (64, 32) and float(dw.abs().max()) > 0 and float(dw.abs().max()) <= 0.01
    assert torch.equal(block.attention.qk_proj.weight, before + dw)
    assert torch.equal(stack.blocks[0].attention.qk_proj.weight, other)
    with pytest.raises(InvalidInput):
        apply_plasticity_(block, ThreeFactor(), box)  # no dopamine
    with pytest.raises(InvalidInput):
        apply_plasticity_(block, rule, box, target="rwkv.r_proj")


# ---------------------------------------------------------------------------------------------- node perturbation
def _regression(seed: int = 0):
    """A linear layer to fit ``y = W* x`` by mean squared error, and its loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 16, 12, generator=gen)  # [B, T, in]
    target = x @ torch.randn(12, 6, generator=gen)  # [B, T, out]
    layer = torch.nn.Linear(12, 6, bias=False)
    torch.nn.init.zeros_(layer.weight)
    return layer, (lambda: torch.nn.functional.mse_loss(layer(x), target))


def test_node_perturbation_follows_the_negative_gradient_on_average():
    layer, loss = _regression()
    weight = layer.weight.detach().clone()
    loss().backward()
    gradient = layer.weight.grad.clone()
    rule = NodePerturbation(sigma=0.01, learning_rate=1.0, max_delta=1e9)
    gen = torch.Generator().manual_seed(1)
    total = torch.zeros_like(weight)
    for _ in range(400):
        with torch.no_grad():
            layer.weight.copy_(weight)
        total += rule.step(layer, loss, generator=gen).delta
    cosine = torch.nn.functional.cosine_similarity(total.flatten(), -gradient.flatten(), dim=0)
    assert cosine > 0.9  # one step alone is mostly noise (checked below); 400 average out
    with torch.no_grad():
        layer.weight.copy_(weight)
    one = rule.step(layer, loss, generator=gen).delta
    assert torch.nn.functional.cosine_similarity(one.flatten(), -gradient.flatten(), dim=0) < cosine


def test_node_perturbation_lowers_the_loss_without_gradients():
    layer, loss = _regression()
    rule = NodePerturbation(sigma=0.01, learning_rate=0.02, max_delta=0.05)
    gen = torch.Generator().manual_seed(2)
    start = loss().item()
    for _ in range(300):
        step = rule.step(layer, loss, generator=gen)
        assert (step.delta.abs() <= 0.05).all()
    assert loss().item() < 0.2 * start
    assert layer.weight.grad is None


def test_node_perturbation_bad_input():
    for field, kwargs in (("sigma", {"sigma": 0.0}), ("learning_rate", {"learning_rate": -1.0}),
                          ("max_delta", {"max_delta": 0.0})):  # fmt: skip
        with pytest.raises(InvalidInput) as info:
            NodePerturbation(**kwargs)
        assert info.value.field == field
    layer, loss = _regression()
    with pytest.raises(InvalidInput) as info:
        NodePerturbation().step(torch.nn.ReLU(), loss)
    assert info.value.field == "layer"
    with pytest.raises(RuntimeError, match="never ran"):
        NodePerturbation().step(torch.nn.Linear(2, 2), loss)
    weight = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="non-finite"):
        NodePerturbation().step(layer, lambda: float("nan") * loss())
    assert torch.equal(layer.weight, weight)  # nothing applied
