"""The model's T4DX memory: retrieved episodes become the stack's context (a causal effect on generation),
writes pass the τ gate, and every access is a T4DX SEARCH or INSERT."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from t4dm.errors import DimensionMismatch, InvalidInput  # noqa: E402
from t4dm.gate import WriteGate  # noqa: E402
from t4dm.qwen import ModelMemory  # noqa: E402
from t4dm.storage import T4DX  # noqa: E402
from tests.qwen.helpers import VOCAB, left_padded, random_ids, tiny_unified  # noqa: E402

DIM = 16


@pytest.fixture
def store(tmp_path):
    with T4DX.open(tmp_path / "store", dim=DIM, durability="none") as db:
        yield db


class CountingStore:
    """Delegates to a T4DX store and records which primitives were called."""

    def __init__(self, db: T4DX) -> None:
        self.db = db
        self.dim = db.dim
        self.calls: list[str] = []

    def search(self, *args, **kwargs):
        self.calls.append("search")
        return self.db.search(*args, **kwargs)

    def insert(self, *args, **kwargs):
        self.calls.append("insert")
        return self.db.insert(*args, **kwargs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_a_written_memory_changes_generation(store):
    model = tiny_unified(20, lora=True, up_std=0.3, memory_dim=DIM)
    model.attach_memory(store, k=2)
    prompt = random_ids(1, 8, seed=20)
    empty = model.generate(prompt, 10)
    assert empty.context is None  # nothing to retrieve: no context

    [write] = model.remember(prompt)
    assert write.decision.store and write.id is not None
    item = store.get(write.id)
    assert np.array_equal(item.vector, write.vector) and item.kind == "episode" and item.kappa == 0.0
    assert item.fields["tau"] == write.decision.tau and item.fields["tokens"] == 8

    recalled = model.generate(prompt, 10)
    assert recalled.context is not None
    assert _rel(recalled.scores, empty.scores) > 1e-3
    assert not torch.equal(recalled.sequences, empty.sequences)
    # the context is the retrieved vector through memory_context (the only memory, so k=2 finds it alone)
    with torch.no_grad():
        expected = model.memory_context(torch.from_numpy(write.vector)[None])
    torch.testing.assert_close(recalled.context, expected)
    # reading the memory, the cached and the recomputed paths still agree
    full = model.generate(prompt, 10, use_cache=False)
    assert torch.equal(full.sequences, recalled.sequences) and _rel(full.scores, recalled.scores) < 1e-5
    # and read_memory=False is the empty-store generation again
    assert torch.equal(model.generate(prompt, 10, read_memory=False).sequences, empty.sequences)


def test_reads_and_writes_are_t4dx_search_and_insert(store):
    counting = CountingStore(store)
    model = tiny_unified(21, up_std=0.3, memory_dim=DIM)
    model.attach_memory(counting)
    prompts = random_ids(2, 6, seed=21)
    out = model.generate(prompts, 5, remember=True)
    # generate reads (one SEARCH per sequence); remember's forward reads again (the loss is the model's with
    # its memory), then per sequence one SEARCH (novelty) and one INSERT
    assert counting.calls == ["search"] * 2 + ["search"] * 2 + ["search", "insert"] * 2
    assert [w.id is not None for w in out.memory_writes] == [True, True]
    assert len(store) == 2


def _loss(model, ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy of one sequence under ``model``."""
    with torch.no_grad():
        logits = model(ids).logits
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].reshape(-1, VOCAB), ids[0, 1:]))


def test_remember_feeds_the_gate_the_model_loss_and_novelty(store):
    gate = WriteGate(lambda_surprise=0.1, lambda_novelty=4.0, lambda_reward=2.0, bias=-1.0)
    model = tiny_unified(22, up_std=0.3, memory_dim=DIM)
    model.attach_memory(store, gate=gate)
    ids = random_ids(2, 9, seed=22)
    expected = _loss(model, ids[:1])  # the store is empty: no memory read
    first = model.remember(ids[:1])[0]
    assert first.decision.surprise == pytest.approx(expected, rel=1e-5)
    assert first.decision.novelty == 1.0 and first.decision.store  # empty store: novel
    again = model.remember(ids[:1])[0]
    assert again.decision.novelty < 1e-5  # the same episode is known now ...
    assert not again.decision.store and again.id is None  # ... and the gate refuses it
    assert again.decision.tau == pytest.approx(gate.tau(again.decision.surprise, again.decision.novelty))
    rewarded = model.remember(ids[:1].int(), reward=1.0)[0]  # int32 token ids work too
    assert rewarded.decision.store  # a reward lets a known episode through
    expected = _loss(model, ids[1:])  # with the memory read, as remember() does
    other = model.remember(ids[1:])[0]
    assert other.decision.surprise == pytest.approx(expected, rel=1e-5)
    assert 0.0 < other.decision.novelty <= 2.0
    assert len(store) == 2 + int(other.decision.store)


def test_gate_blocks_writes_with_low_inputs(store):
    memory = ModelMemory(store, DIM)  # the default model gate
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(DIM).astype(np.float32)
    assert memory.write(vector, surprise=0.0).id is not None  # new: novelty 1 passes
    blocked = memory.write(vector, surprise=0.0)  # known, unsurprising, unrewarded
    assert not blocked.decision.store and blocked.id is None and blocked.decision.tau < 0.5
    assert len(store) == 1
    assert memory.write(vector, surprise=5.0).id is not None  # a surprising repeat passes
    veto = memory.write(rng.standard_normal(DIM).astype(np.float32), surprise=0.0, reward=-3.0)
    assert veto.id is None and veto.decision.novelty > 0.5  # novel, but a negative reward vetoes it
    assert len(store) == 2


def test_memory_dimension_must_match_the_store(tmp_path):
    model = tiny_unified(23, memory_dim=DIM)
    with (
        T4DX.open(tmp_path / "wide", dim=DIM + 1, durability="none") as wide,
        pytest.raises(DimensionMismatch) as info,
    ):
        model.attach_memory(wide)
    assert info.value.field == "store" and info.value.expected == DIM
    assert model.memory is None
    with T4DX.open(tmp_path / "ok", dim=DIM, durability="none") as db:
        memory = ModelMemory(db, DIM)
        with pytest.raises(DimensionMismatch) as info:
            memory.write(np.ones(DIM + 3, dtype=np.float32), surprise=1.0)
        assert info.value.field == "vector" and len(db) == 0
        with pytest.raises(DimensionMismatch):
            memory.read(np.ones((2, DIM - 1), dtype=np.float32))


def test_memory_bad_input(store):
    plain = tiny_unified(24)
    with pytest.raises(InvalidInput) as info:
        plain.attach_memory(store)
    assert info.value.field == "memory_dim"
    model = tiny_unified(24, memory_dim=DIM)
    with pytest.raises(InvalidInput) as info:
        model.remember(random_ids(1, 4))
    assert info.value.field == "memory"
    with pytest.raises(InvalidInput) as info:
        model.generate(random_ids(1, 4), 2, remember=True)
    assert info.value.field == "remember"
    model.attach_memory(store)
    with pytest.raises(InvalidInput) as info:
        model.remember(random_ids(1, 1))
    assert info.value.field == "input_ids"
    for field, kwargs in (("k", {"k": 0}), ("gate", {"gate": 0.5}), ("kind", {"kind": ""}),
                          ("kappa", {"kappa": (0.9, 0.1)}), ("kappa", {"kappa": (0.0, 2.0)}),
                          ("kappa", {"kappa": 0.5}), ("kappa", {"kappa": (True, 1.0)})):  # fmt: skip
        with pytest.raises(InvalidInput) as info:
            ModelMemory(store, DIM, **kwargs)
        assert info.value.field == field
    with pytest.raises(InvalidInput) as info:
        ModelMemory(object(), DIM)
    assert info.value.field == "store"
    with pytest.raises(InvalidInput):
        tiny_unified(24, memory_dim=0)


def test_generation_rereads_the_memory_every_n_tokens(store):
    rng = np.random.default_rng(40)
    store.insert_batch(rng.normal(size=(60, DIM)).astype(np.float32), [{"n": i} for i in range(60)])
    counting = CountingStore(store)
    model = tiny_unified(40, up_std=0.3, memory_dim=DIM)
    model.attach_memory(counting, k=1)
    prompt = random_ids(2, 6, seed=40)
    out = model.generate(prompt, 12, reread_every=3)
    # one SEARCH per row for the prompt, then after new tokens 3, 6 and 9 (token 12 is not run again)
    assert counting.calls == ["search"] * 2 * 4
    # the last read was queried with the hooked layer's state averaged over the 6 + 8 tokens run by then
    with torch.no_grad():
        seen = model(out.sequences[:, : 6 + 8], read_memory=False)
        retrieved, found = model.memory.read(model.memory_key(seen.layer_mean))
        expected = model.memory_context(torch.from_numpy(retrieved))
    assert found.all()
    torch.testing.assert_close(out.context, expected)
    first = model.generate(prompt, 1).context  # the prompt's context (fixed seeds: the reads moved on)
    assert not torch.equal(out.context, first)
    # the uncached path gives each position the context in force when the cached path ran it
    full = model.generate(prompt, 12, reread_every=3, use_cache=False)
    assert torch.equal(full.sequences, out.sequences) and _rel(full.scores, out.scores) < 1e-5
    # the decoding steps in a StackDecoder (new contexts copied into its buffer): the same, bit for bit
    decoded = model.generate(prompt, 12, reread_every=3, stack_graph=True)
    assert torch.equal(decoded.sequences, out.sequences) and torch.equal(decoded.scores, out.scores)
    # and without re-reads the whole generation keeps the prompt's context
    counting.calls.clear()
    model.generate(prompt, 12)
    assert counting.calls == ["search"] * 2


def test_rereading_bad_input(store):
    model = tiny_unified(41, memory_dim=DIM)
    model.attach_memory(store)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InvalidInput) as info:
            model.generate(random_ids(1, 4), 3, reread_every=bad)
        assert info.value.field == "reread_every" and info.value.value is bad


def test_left_padded_generation_reads_and_remembers_per_row(store):
    """Each row of a left-padded batch queries the memory with its own tokens (prompt and re-reads), generates
    what it generates alone, and is remembered as its own tokens' episode."""
    rng = np.random.default_rng(42)
    store.insert_batch(rng.normal(size=(40, DIM)).astype(np.float32), [{"n": i} for i in range(40)])
    model = tiny_unified(42, up_std=0.3, memory_dim=DIM)
    model.attach_memory(store, k=1)
    lengths = [8, 3, 5]
    rows = [random_ids(1, n, seed=420 + b) for b, n in enumerate(lengths)]
    ids, mask = left_padded(rows)
    out = model.generate(ids, 7, attention_mask=mask, reread_every=2)
    full = model.generate(ids, 7, attention_mask=mask, reread_every=2, use_cache=False)
    assert torch.equal(full.sequences, out.sequences) and _rel(full.scores, out.scores) < 1e-5
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        alone = model.generate(row, 7, reread_every=2)
        assert torch.equal(out.sequences[b, 8:], alone.sequences[0, n:]), b
        assert _rel(out.scores[b], alone.scores[0]) < 1e-5, b
        torch.testing.assert_close(out.context[b], alone.context[0], rtol=1e-5, atol=1e-6)
    # remember(): each row's surprise is its own tokens' loss (memory read, as alone), its length its own
    expected = [
        _loss(model, torch.cat([row, out.sequences[b : b + 1, 8:]], dim=1)) for b, row in enumerate(rows)
    ]
    grown = torch.cat([mask, torch.ones(3, 7, dtype=torch.long)], dim=1)
    writes = model.remember(out.sequences, attention_mask=grown)
    assert [w.decision.surprise for w in writes] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InvalidInput) as info:
        model.remember(
            ids, attention_mask=torch.cat([torch.zeros(3, 7, dtype=torch.long), mask[:, 7:]], dim=1)
        )
    assert info.value.field == "input_ids"  # rows of one token have no loss


def test_remember_can_drive_the_neuromodulator_bus(store):
    model = tiny_unified(25, up_std=0.3, memory_dim=DIM)
    model.attach_memory(store)
    bus = model.stack.bus
    before = bus.levels.clone()
    prompt = random_ids(2, 9, seed=25)
    model.remember(prompt, reward=1.0)
    assert torch.equal(bus.levels, before)  # off by default
    plain = model.generate(prompt, 6, read_memory=False)
    writes = model.remember(prompt, reward=1.0, modulate=True)
    surprise = sum(w.decision.surprise for w in writes) / 2
    novelty = sum(w.decision.novelty for w in writes) / 2
    rate = bus.rate
    expected = before.clone()
    expected[:, 0] = np.tanh(1.0)  # no reward was expected yet: δ = 1
    expected[:, 1] += rate * (surprise / (surprise + bus.pe_ref) - expected[:, 1])
    expected[:, 2] += rate * (min(novelty, 1.0) - expected[:, 2])
    expected[:, 3] += rate * (1 / (1 + np.exp(-1.0)) - expected[:, 3])
    torch.testing.assert_close(bus.levels, expected)
    after = model.generate(prompt, 6, read_memory=False)  # the same input, only the levels changed
    assert not torch.equal(after.scores, plain.scores)
    with pytest.raises(InvalidInput) as info:
        model.remember(prompt, modulate="yes")
    assert info.value.field == "modulate"


def test_a_kappa_policy_on_reads(store):
    """kappa=(lo, hi): only memories consolidated that far are read; the gate's novelty still sees them all."""
    rng = np.random.default_rng(60)
    fresh = rng.normal(size=(3, DIM)).astype(np.float32)
    consolidated = rng.normal(size=(2, DIM)).astype(np.float32)
    store.insert_batch(fresh, [{"n": i} for i in range(3)], kappa=0.0, kind="episode")
    store.insert_batch(consolidated, [{"n": i} for i in range(2)], kappa=0.9, kind="episode")
    semantic = ModelMemory(store, DIM, k=5, kappa=(0.85, 1.0))
    everything = ModelMemory(store, DIM, k=5)
    query = rng.normal(size=(1, DIM)).astype(np.float32)
    read, found = semantic.read(query)
    assert found.all()
    np.testing.assert_allclose(read[0], consolidated.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        everything.read(query)[0][0], np.vstack([fresh, consolidated]).mean(axis=0), rtol=1e-5
    )
    assert not ModelMemory(store, DIM, kappa=(0.95, 1.0)).read(query)[1].any()  # none that consolidated
    assert semantic.novelty(fresh[0]) == pytest.approx(0.0, abs=1e-6)  # a repeat of a fresh episode
    model = tiny_unified(61, memory_dim=DIM)
    assert model.attach_memory(store, kappa=(0.85, 1.0)).kappa == (0.85, 1.0)
