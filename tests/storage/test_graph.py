"""Edges, TRAVERSE, edge weights (overlays and batch scales) and provenance, wherever the rows live."""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime, timedelta

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, UTC, Edge, Item, MergedRows

from .conftest import DIM, vec

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _items(db, n, prefix="n"):
    db.insert([Item(vector=vec(i), id=f"{prefix}{i}") for i in range(n)])


def python_bfs(edges, seeds, depth, rels=None, min_weight=-np.inf, at=None, direction="out"):
    """The reference: edges are (src, dst, rel, weight, valid_from, valid_to) tuples, all live."""
    adjacency: dict[str, list[str]] = {}
    for src, dst, rel, weight, valid_from, valid_to in edges:
        if rels is not None and rel not in rels:
            continue
        if weight < min_weight:
            continue
        if at is not None and not (valid_from <= at < valid_to):
            continue
        near, far = (src, dst) if direction == "out" else (dst, src)
        adjacency.setdefault(near, []).append(far)
    hops = {s: 0 for s in seeds}
    queue = deque(seeds)
    while queue:
        node = queue.popleft()
        if hops[node] == depth:
            continue
        for nxt in adjacency.get(node, []):
            if nxt not in hops:
                hops[nxt] = hops[node] + 1
                queue.append(nxt)
    return hops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_traverse_equals_python_bfs(store, seed):
    """Random graphs with relations, weights and valid times; the data in every place it can live."""
    rng = random.Random(seed)
    db = store.db
    n = 60
    _items(db, n)
    edges = []
    for _ in range(200):
        src, dst = f"n{rng.randrange(n)}", f"n{rng.randrange(n)}"
        rel = rng.choice(["related", "follows", "part_of"])
        weight = round(rng.uniform(-1, 2), 3)
        start = T0 + timedelta(days=rng.randrange(10))
        end = start + timedelta(days=rng.randrange(1, 10))
        edges.append((src, dst, rel, weight, start, end))
    # last write wins for a repeated (src, rel, dst): keep the reference the same
    latest = {(s, r, d): (s, d, r, w, vf, vt) for s, d, r, w, vf, vt in edges}
    db.add_edges([Edge(s, d, r, w, vf, vt) for s, d, r, w, vf, vt in edges[:100]])
    db = store.settle()
    db.add_edges([Edge(s, d, r, w, vf, vt) for s, d, r, w, vf, vt in edges[100:]])
    db = store.settle()
    reference = list(latest.values())
    seeds = [f"n{i}" for i in rng.sample(range(n), 3)]
    at = T0 + timedelta(days=5, hours=3)
    for kwargs, ref in [
        ({}, {}),
        ({"rel": "follows"}, {"rels": {"follows"}}),
        ({"rel": ["follows", "part_of"]}, {"rels": {"follows", "part_of"}}),
        ({"min_weight": 0.5}, {"min_weight": 0.5}),
        ({"valid_at": at}, {"at": at}),
        ({"direction": "in"}, {"direction": "in"}),
        (
            {"rel": "related", "min_weight": 0.0, "valid_at": at},
            {"rels": {"related"}, "min_weight": 0.0, "at": at},
        ),
    ]:
        for depth in (0, 1, 2, 4):
            got = db.traverse(seeds, depth=depth, **kwargs)
            assert got == python_bfs(reference, seeds, depth, **ref), (kwargs, depth)


def test_edges_weights_and_removal(store, clock):
    db = store.db
    _items(db, 3)
    db.add_edges([Edge("n0", "n1", weight=0.5), Edge("n0", "n2", "follows", 2.0)])
    db = store.settle()
    out = sorted(db.edges("n0"), key=lambda e: e.dst)
    assert [(e.src, e.dst, e.rel, e.weight) for e in out] == [
        ("n0", "n1", "related", 0.5),
        ("n0", "n2", "follows", 2.0),
    ]
    assert out[0].recorded_at == out[0].valid_from == T0 + timedelta(microseconds=1)  # the second commit
    assert out[0].superseded_at is None
    assert [e.src for e in db.edges("n1", direction="in")] == ["n0"]
    assert db.traverse("n0", 1, with_weights=True) == {"n0": (0, np.inf), "n1": (1, 0.5), "n2": (1, 2.0)}
    before = out[0].recorded_at
    clock.advance()
    db.remove_edges("n0", "n1")
    db = store.settle()
    assert [e.dst for e in db.edges("n0")] == ["n2"]
    assert sorted(e.dst for e in db.edges("n0", known_at=before)) == ["n1", "n2"]
    assert db.traverse("n0", 1, known_at=before) == {"n0": 0, "n1": 1, "n2": 1}
    with pytest.raises(errors.UnknownId):
        db.remove_edges("n0", "n1")
    # re-adding starts a new version with its own weight
    db.add_edges(Edge("n0", "n1", weight=3.0))
    assert {e.dst: e.weight for e in store.settle().edges("n0")} == {"n1": 3.0, "n2": 2.0}


def test_weight_overlays_and_batch_scales(store, clock):
    db = store.db
    _items(db, 4)
    db.add_edges(
        [Edge("n0", "n1", weight=1.0), Edge("n0", "n2", weight=1.0), Edge("n0", "n3", "follows", 1.0)]
    )
    db = store.settle()
    assert db.update_edge_weight("n0", "n1", delta=0.25) == pytest.approx(1.25)
    db = store.settle()
    db.batch_scale_weights(0.5)  # every relation
    db = store.settle()
    db.batch_scale_weights(0.5, rel="follows")
    db = store.settle()
    assert db.update_edge_weight("n0", "n2", delta=1.0) == pytest.approx(1.5)
    db = store.settle()
    db.add_edges(Edge("n1", "n2", weight=4.0))  # added after the scales: its weight is as given
    db = store.settle()
    expected = {("n0", "n1"): 0.625, ("n0", "n2"): 1.5, ("n0", "n3"): 0.25, ("n1", "n2"): 4.0}
    got = {(e.src, e.dst): e.weight for src in ("n0", "n1") for e in db.edges(src)}
    assert got == pytest.approx(expected)
    assert db.update_edge_weight("n0", "n3", "follows", weight=7.0) == pytest.approx(7.0)
    db.compact()  # folds overlays and scales into the edges
    db.close()
    db = store.open()
    got = {(e.src, e.dst): e.weight for src in ("n0", "n1") for e in db.edges(src)}
    assert got == pytest.approx({**expected, ("n0", "n3"): 7.0})
    assert db.traverse("n0", 1, min_weight=1.0) == {"n0": 0, "n2": 1, "n3": 1}
    assert db._snap.scales == {}


def test_a_scale_folded_by_compaction_is_not_applied_again_at_reopen(store):
    # a batch scale writes no row: after the last flush it lives in the WAL only, and a full compaction
    # folds it into the weights; recovery applied it a second time (0.25 here) until the fold said so
    db = store.db
    _items(db, 2)
    db.add_edges(Edge("n0", "n1", weight=1.0))
    db = store.settle()
    db.batch_scale_weights(0.5)
    db.compact()
    assert [e.weight for e in db.edges("n0")] == pytest.approx([0.5])
    db.close()
    db = store.open()
    assert [e.weight for e in db.edges("n0")] == pytest.approx([0.5])
    db.batch_scale_weights(0.5)  # and a scale after the fold still counts once
    db.close()
    db = store.open()
    assert [e.weight for e in db.edges("n0")] == pytest.approx([0.25])


def test_update_edge_weights_is_one_transaction(store):
    db = store.db
    _items(db, 3)
    db.add_edges([Edge("n0", "n1", weight=1.0), Edge("n1", "n2", weight=2.0)])
    db = store.settle()
    got = db.update_edge_weights([("n0", "n1", "related", 0.5), ("n1", "n2", "related", -1.0),
                                  ("n0", "n1", "related", 0.25)])  # fmt: skip
    assert got == pytest.approx([1.5, 1.0, 1.75])
    db = store.settle()
    before = db.stats()["last_seq"]
    for bad, error in [
        ([("n0", "n1", "related", 1.0), ("n0", "n2", "related", 1.0)], errors.UnknownId),  # no n0 -> n2
        ([("n0", "n1", "related", 1.0), ("n1", "n2", "related", float("nan"))], errors.InvalidInput),
        ([("n0", "n1", "related")], errors.InvalidInput),
    ]:
        with pytest.raises(error):
            db.update_edge_weights(bad)
    assert db.stats()["last_seq"] == before
    assert db.update_edge_weights([("n1", "n2", "related", 9.0)], absolute=True) == [9.0]
    db = store.settle()
    assert {(e.src, e.dst): e.weight for s in ("n0", "n1") for e in db.edges(s)} == pytest.approx(
        {("n0", "n1"): 1.75, ("n1", "n2"): 9.0}
    )


def test_provenance_survives_compaction_and_reopen(store, clock):
    db = store.db
    _items(db, 3, prefix="ep")
    db.insert(Item(vector=vec(9), id="fact", kind="prototype"))
    db.add_provenance("fact", ["ep0", "ep2"])
    db = store.settle()
    assert sorted(db.derived_from("fact")) == ["ep0", "ep2"]
    assert db.derivatives("ep0") == ["fact"] and db.derivatives("ep1") == []
    db.compact()
    db.close()
    db = store.open()
    assert sorted(db.derived_from("fact")) == ["ep0", "ep2"]
    assert db.derivatives("ep2") == ["fact"]


def test_policy_prototype_records_its_provenance_atomically(tmp_path, clock):
    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM, clock=clock) as db:
        ids = db.insert([Item(vector=vec(i), fields={"i": i}) for i in range(4)])

        def rem(rows: MergedRows) -> None:
            members = [j for j in range(rows.n) if rows.is_current[j]]
            rows.add(
                Item(vector=rows.vectors(members).mean(axis=0), id="proto", kind="prototype", kappa=0.85),
                derived_from=[rows.ids[j] for j in members],
            )

        db.compact(rem)
        assert sorted(db.derived_from("proto")) == sorted(ids)
        assert db.stats()["segments"] == 1 and db.stats()["memtable_rows"] == 0  # in the compacted segment
    with T4DX.open(path) as db:
        assert sorted(db.derived_from("proto")) == sorted(ids)
        assert all(db.derivatives(i) == ["proto"] for i in ids)


def test_edges_are_not_items(store):
    db = store.db
    _items(db, 2)
    db.add_edges(Edge("n0", "n1"))
    db = store.settle()
    assert len(db) == 2 and {i.id for i in db.scan()} == {"n0", "n1"}
    assert {h.id for h in db.search(vec(0), k=10)} == {"n0", "n1"}


def test_bad_graph_input_writes_nothing(db):
    _items(db, 2)
    before = db.stats()["last_seq"]
    with pytest.raises(errors.UnknownId) as info:
        db.add_edges([Edge("n0", "n1"), Edge("n0", "ghost")])
    assert info.value.field == "edges[1].dst"
    for bad, field in [
        (Edge("n0", "n1", weight=float("nan")), "edges[0].weight"),
        (Edge("n0", "n1", rel=""), "edges[0].rel"),
        (Edge("", "n1"), "edges[0].src"),
        (Edge("n0", "n1", valid_from=datetime(2025, 1, 1)), "valid_from[0]"),
    ]:
        with pytest.raises(errors.InvalidInput) as info:
            db.add_edges(bad)
        assert info.value.field == field
    assert db.stats()["last_seq"] == before
    with pytest.raises(errors.InvalidInput, match="depth"):
        db.traverse("n0", depth=-1)
    with pytest.raises(errors.InvalidInput, match="direction"):
        db.traverse("n0", direction="sideways")
    with pytest.raises(errors.InvalidTime):
        db.traverse("n0", known_at=datetime(2025, 1, 1))
    with pytest.raises(errors.UnknownId):
        db.update_edge_weight("n0", "n1", delta=1.0)
    db.add_edges(Edge("n0", "n1"))
    with pytest.raises(errors.InvalidInput, match="exactly one"):
        db.update_edge_weight("n0", "n1")
    with pytest.raises(errors.InvalidInput):
        db.update_edge_weight("n0", "n1", delta=float("inf"))
    with pytest.raises(errors.InvalidInput, match="factor"):
        db.batch_scale_weights(0.0)
    with pytest.raises(errors.InvalidInput) as info:
        db.batch_scale_weights(0.5, where="user_id")
    assert info.value.field == "where"
    with pytest.raises(errors.InvalidInput) as info:
        db.batch_scale_weights(0.5, rel="", where={"user_id": "u"})
    assert info.value.field == "rel"
    with pytest.raises(errors.InvalidInput, match="reserved"):
        db.insert(Item(vector=vec(0), id="\x1eedge-like"))
    # U+001F separates an edge id's parts: an id holding it made every read of its edges fail to parse
    with pytest.raises(errors.InvalidInput, match="U\\+001F is reserved") as info:
        db.insert([Item(vector=vec(0), id="fine"), Item(vector=vec(1), id="a\x1fb")])
    assert info.value.field == "items[1].id" and db.get("fine") is None
    with pytest.raises(errors.InvalidInput, match="reserved") as info:
        db.add_edges(Edge("n0", "x\x1fy"), check_endpoints=False)
    assert info.value.field == "edges[0].dst"


def test_batch_scale_weights_where_scales_the_edges_of_matching_items(store):
    db = store.db
    db.insert([Item(vector=vec(i), id=f"n{i}", fields={"user_id": "a" if i < 2 else "b"}) for i in range(4)])
    db.add_edges(
        [
            Edge("n0", "n2", weight=1.0),
            Edge("n0", "n3", "follows", 2.0),
            Edge("n1", "n0", weight=4.0),
            Edge("n2", "n0", weight=8.0),
            Edge("n3", "n1", "follows", 16.0),
        ]
    )
    db = store.settle()
    db.batch_scale_weights(0.9)  # a lazy scale first: the filtered scale multiplies the effective weight
    db.batch_scale_weights(0.5, where={"user_id": "a"})  # the edges leaving n0 and n1
    db = store.settle()
    db.batch_scale_weights(0.25, rel="follows", where={"user_id": "b"})  # n3 -follows-> n1 only
    db.batch_scale_weights(3.0, where={"user_id": "nobody"})  # no match: nothing changes
    db = store.settle()
    got = {(e.src, e.dst): e.weight for src in ("n0", "n1", "n2", "n3") for e in db.edges(src)}
    expected = {
        ("n0", "n2"): 0.45,
        ("n0", "n3"): 0.9,
        ("n1", "n0"): 1.8,
        ("n2", "n0"): 7.2,
        ("n3", "n1"): 3.6,
    }
    assert got == pytest.approx(expected)
    db.add_edges(Edge("n1", "n3", weight=1.0))  # added later: not scaled
    db = store.settle()
    assert {e.dst: e.weight for e in db.edges("n1")} == pytest.approx({"n0": 1.8, "n3": 1.0})
    db.compact()
    db = store.settle()
    got = {(e.src, e.dst): e.weight for src in ("n0", "n2", "n3") for e in db.edges(src)}
    assert got == pytest.approx({k: v for k, v in expected.items() if k[0] != "n1"})


def test_traverse_result_names_lazily_and_answers_lookups(store):
    db = store.db
    _items(db, 6)
    db.add_edges(
        [Edge("n0", "n1", weight=0.5), Edge("n1", "n2"), Edge("n0", "n3", weight=3.0), Edge("n4", "n5")]
    )
    db = store.settle()
    reached = db.traverse(["n0"], depth=2, with_weights=True)
    assert len(reached) == 4 and reached._names is None  # nothing named yet
    assert "n2" in reached and "n4" not in reached and 7 not in reached
    assert reached["n3"] == (1, 3.0) and reached["n0"] == (0, np.inf)
    with pytest.raises(KeyError):
        reached["n5"]
    assert reached._names is None  # lookups are hash probes, no naming
    assert next(iter(reached)) == "n0" and set(reached) == {"n0", "n1", "n2", "n3"}
    assert sorted(reached.hops.tolist()) == [0, 1, 1, 2] and len(reached.keys_u64()[0]) == 4
    assert dict(reached.items()) == reached.to_dict() == {"n0": (0, np.inf), "n1": (1, 0.5), "n3": (1, 3.0),
                                                          "n2": (2, 1.0)}  # fmt: skip
    assert sorted(reached.values()) == [(0, np.inf), (1, 0.5), (1, 3.0), (2, 1.0)]
    assert reached == {"n0": (0, np.inf), "n1": (1, 0.5), "n3": (1, 3.0), "n2": (2, 1.0)}
    assert db.traverse("n4", 3) == {"n4": 0, "n5": 1} and db.traverse("nothing-here", 2) == {
        "nothing-here": 0
    }


def test_traverse_sees_edges_superseded_after_it_first_ran(tmp_path, clock):
    """A segment's clean nodes skip the version links; superseding one of their edges later must still
    hide it (from the next snapshot on), on the fast single-segment path and the general one."""
    db = T4DX.open(tmp_path / "db", dim=DIM, durability="none", clock=clock)
    _items(db, 4)
    db.add_edges([Edge("n0", "n1"), Edge("n1", "n2"), Edge("n0", "n3")])
    db.compact()
    assert db.traverse("n0", 2) == {"n0": 0, "n1": 1, "n3": 1, "n2": 2}  # marks nothing dirty
    before = clock.advance()  # after every write so far
    clock.advance()
    db.remove_edges("n0", "n1")  # closes the segment's row of n0 -> n1 (memtable tombstone)
    assert db.traverse("n0", 2) == {"n0": 0, "n3": 1}
    assert db.traverse("n0", 2, known_at=before) == {"n0": 0, "n1": 1, "n3": 1, "n2": 2}
    db.add_edges(Edge("n0", "n1", weight=2.0))  # back, as a new version
    db.flush()  # two segments: the general path
    assert db.traverse("n0", 1, with_weights=True) == {"n0": (0, np.inf), "n1": (1, 2.0), "n3": (1, 1.0)}
    db.remove_edges("n0", "n3")
    db.compact()  # one segment again, with its history: the fast path reads the links of dirty nodes
    assert db.traverse("n0", 2) == {"n0": 0, "n1": 1, "n2": 2}
    db.close()


@pytest.mark.parametrize("seed", [4, 5])
def test_neighbours_are_the_edges_ids(store, clock, seed):
    """neighbours() names the near and far end of exactly the edges edges() returns, wherever they live."""
    rng = random.Random(seed)
    db = store.db
    n = 40
    _items(db, n)
    edges = []
    for _ in range(150):
        src, dst = f"n{rng.randrange(n)}", f"n{rng.randrange(n)}"
        start = T0 + timedelta(days=rng.randrange(10))
        rel = rng.choice(["related", "follows", "next"])
        edges.append(Edge(src, dst, rel, 1.0, start, start + timedelta(days=rng.randrange(1, 10))))
    db.add_edges(edges[:80])
    db = store.settle()
    before = clock.advance()
    clock.advance()
    db.add_edges(edges[80:])
    db.remove_edges(edges[0].src, edges[0].dst, edges[0].rel)
    db = store.settle()
    seeds = [f"n{i}" for i in rng.sample(range(n), 12)]
    at = T0 + timedelta(days=5, hours=3)
    checked = 0
    for kwargs in ({}, {"rel": "next"}, {"rel": ["follows", "next"]}, {"valid_at": at}, {"known_at": before}):
        for direction in ("out", "in"):
            got = sorted(db.neighbours(seeds, direction=direction, **kwargs))
            records = db.edges(seeds, direction=direction, **kwargs)
            want = sorted((e.src, e.dst) if direction == "out" else (e.dst, e.src) for e in records)
            assert got == want, (kwargs, direction)
            assert all(near in seeds for near, _ in got)
            checked += len(got)
    assert checked > 100  # the graph is not trivially empty under the filters
    assert db.neighbours([]) == []
    with pytest.raises(errors.InvalidInput, match="direction"):
        db.neighbours("n1", direction="both")
