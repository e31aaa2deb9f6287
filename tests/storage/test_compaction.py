"""Compaction: merge order, version resolution, history retention, tombstones, the policy hook."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, Edge, Item, MergedRows
from t4dm.storage.compaction import kway_merge

from .conftest import DIM, vec


class _Run:
    def __init__(self, hi, lo, seq):
        self.key_hi = np.asarray(hi, dtype=np.uint64)
        self.key_lo = np.asarray(lo, dtype=np.uint64)
        self.seq = np.asarray(seq, dtype=np.uint64)
        self.n = len(hi)


def test_kway_merge_matches_lexsort():
    rng = np.random.default_rng(0)
    runs = []
    for size in (0, 1, 57, 300, 12):
        hi = rng.integers(0, 4, size).astype(np.uint64)  # many equal hi: lo and seq decide
        lo = rng.integers(0, 2**64 - 1, size, dtype=np.uint64, endpoint=True) % 7
        seq = rng.integers(0, 10**6, size).astype(np.uint64)
        order = np.lexsort((seq, lo, hi))
        runs.append(_Run(hi[order], lo[order], seq[order]))
    src, row = kway_merge(runs)
    merged = np.array(
        [(runs[s].key_hi[r], runs[s].key_lo[r], runs[s].seq[r]) for s, r in zip(src, row, strict=False)]
    )
    everything = np.concatenate([np.stack([r.key_hi, r.key_lo, r.seq], axis=1) for r in runs if r.n])
    expected = everything[np.lexsort((everything[:, 2], everything[:, 1], everything[:, 0]))]
    np.testing.assert_array_equal(merged, expected)
    assert sorted(zip(src.tolist(), row.tolist(), strict=False)) == sorted(
        (s, r) for s, run in enumerate(runs) for r in range(run.n)
    )


def _store(tmp_path, clock, **options):
    return T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock, **options)


def test_full_compaction_keeps_history_by_default(tmp_path, clock):
    with _store(tmp_path, clock) as db:
        db.insert(Item(vector=vec(0), id="a", fields={"v": 0}))
        db.flush()
        for v in range(1, 4):
            clock.advance()
            db.update_fields("a", {"v": v})
            db.flush()
        clock.advance()
        db.delete("a")
        stats = db.compact()
        assert stats.full and stats.segments_in == 5 and stats.rows_in == stats.rows_out == 5
        assert db.stats()["segments"] == 1
        assert [v.fields["v"] for v in db.history("a")] == [0, 1, 2, 3]
        assert db.get("a") is None
        assert db.get("a", as_of=clock.now - timedelta(seconds=1)).fields == {"v": 3}


def test_retention_drops_old_versions_then_tombstones(tmp_path, clock):
    with _store(tmp_path, clock, history_retention=timedelta(seconds=10)) as db:
        db.insert([Item(vector=vec(0), id="a", fields={"v": 0}), Item(vector=vec(1), id="gone")])
        clock.advance(5)
        db.update_fields("a", {"v": 1})  # v0 superseded at t=5
        db.delete("gone")  # tombstone at t=5(+1 µs)
        clock.advance(20)
        db.update_fields("a", {"v": 2})  # v1 superseded at t=25
        clock.advance(1)  # now t=26: the cutoff is t=16
        stats = db.compact()
        assert [v.fields["v"] for v in db.history("a")] == [1, 2]  # v0 was superseded before the cutoff
        assert db.history("gone") == [] and db.get("gone") is None
        assert (
            stats.rows_in == 5 and stats.rows_out == 2
        )  # of a:v0 a:v1 a:v2 gone gone-tombstone: v0, 'gone' and its tombstone are dropped
        db.close()
    with T4DX.open(str(tmp_path / "s"), clock=clock) as db:
        assert [v.fields["v"] for v in db.history("a")] == [1, 2]


def test_retention_zero_erases_deleted_items(tmp_path, clock):
    with _store(tmp_path, clock, history_retention=0) as db:
        ids = db.insert([Item(vector=vec(i)) for i in range(10)])
        db.delete(ids[:5])
        clock.advance()
        stats = db.compact()
        assert stats.rows_out == 5 and len(db) == 5
        assert all(db.history(i) == [] for i in ids[:5])


def _bump_episodes(rows: MergedRows) -> None:
    live = rows.is_current & (np.asarray(rows.kinds) == "episode")
    rows.kappa[live] += 0.15


def test_policy_changes_kappa_drops_and_adds(tmp_path, clock):
    with _store(tmp_path, clock) as db:
        ids = db.insert(
            [Item(vector=vec(i), fields={"i": i}, kind="episode" if i < 6 else "entity") for i in range(8)]
        )
        db.update_fields(ids[0], {"i": 100})
        seen: dict = {}

        def policy(rows: MergedRows) -> None:
            seen["n"], seen["current"] = rows.n, int(rows.is_current.sum())
            _bump_episodes(rows)
            drop = [j for j in range(rows.n) if rows.ids[j] == ids[7]]
            rows.keep[drop] = False  # forget item 7 entirely
            members = [j for j in range(rows.n) if rows.is_current[j] and rows.kinds[j] == "episode"]
            rows.add(
                Item(
                    vector=rows.vectors(members).mean(axis=0),
                    id="prototype-1",
                    kind="prototype",
                    kappa=0.85,
                    fields={"sources": [rows.ids[j] for j in members]},
                )
            )

        stats = db.compact(policy)
        assert seen == {"n": 9, "current": 8}
        # item 7's row dropped, the prototype added, and for the change feed a κ overlay per bumped episode
        # and an erasing tombstone of item 7 (forgotten)
        assert stats.rows_added == 1 and stats.rows_out == 9 - 1 + 1 + 6 + 1
        assert [round(i.kappa, 6) for i in db.scan(kind="episode")] == [0.15] * 6
        assert db.get(ids[7]) is None and db.history(ids[7]) == []
        proto = db.get("prototype-1")
        assert proto.kappa == 0.85 and len(proto.fields["sources"]) == 6
        np.testing.assert_allclose(proto.vector, np.mean([vec(i) for i in range(6)], axis=0), rtol=1e-6)
        assert [v.fields["i"] for v in db.history(ids[0])] == [0, 100]
        assert db.stats()["segments"] == 1
    with T4DX.open(str(tmp_path / "s")) as db:  # added rows and κ changes are durable
        assert db.get("prototype-1").kappa == 0.85
        assert db.count(kind="episode", kappa=(0.1, 0.2)) == 6
        db.insert(Item(vector=vec(50)))  # sequence numbers continue after the added row
        # inserts, update, the six κ overlays, the erasing tombstone, the added prototype, this insert
        assert db.stats()["last_seq"] == 8 + 1 + 6 + 1 + 1 + 1
        assert len(db) == 8 - 1 + 1 + 1


def test_policy_new_version_of_existing_item(tmp_path, clock):
    with _store(tmp_path, clock) as db:
        db.insert(Item(vector=vec(0), id="a", fields={"v": 1}))
        clock.advance()

        def policy(rows: MergedRows) -> None:
            rows.add(Item(vector=vec(1), id="a", fields={"v": 2}))

        db.compact(policy)
        assert db.get("a").fields == {"v": 2}
        assert [v.fields["v"] for v in db.history("a")] == [1, 2]


def test_policy_provenance_after_a_batch_scale_has_weight_one(tmp_path, clock):
    # the compaction folds the scales in force into the edges and drops them; a policy's provenance edges
    # were stored divided by those scales, so after a scale of 0.5 they read 2.0
    with _store(tmp_path, clock) as db:
        db.insert([Item(vector=vec(0), id="a"), Item(vector=vec(1), id="b")])
        db.add_edges(Edge("a", "b", weight=3.0))
        db.batch_scale_weights(0.5)

        def policy(rows: MergedRows) -> None:
            rows.add(Item(vector=vec(2), id="p", kind="prototype"), derived_from=["a", "b"])

        db.compact(policy)
        want = {("a", "b", "related"): 1.5, ("p", "a", "derived_from"): 1.0, ("p", "b", "derived_from"): 1.0}
        assert {(e.src, e.dst, e.rel): e.weight for e in db.edges(["a", "p"])} == want
        db.close()
    with T4DX.open(str(tmp_path / "s"), clock=clock) as db:
        assert {(e.src, e.dst, e.rel): e.weight for e in db.edges(["a", "p"])} == want


def test_policy_errors_leave_store_unchanged(tmp_path, clock):
    with _store(tmp_path, clock) as db:
        db.insert([Item(vector=vec(i)) for i in range(3)])
        db.flush()
        db.insert(Item(vector=vec(9)))
        db.flush()

        def nan_kappa(rows: MergedRows) -> None:
            rows.kappa[0] = np.nan

        def bad_item(rows: MergedRows) -> None:
            rows.add(Item(vector=np.zeros(DIM + 2)))

        with pytest.raises(errors.InvalidInput, match="kappa"):
            db.compact(nan_kappa)
        with pytest.raises(errors.DimensionMismatch, match=r"added\[0\]"):
            db.compact(bad_item)
        assert db.stats()["segments"] == 2 and len(db) == 4
    with T4DX.open(str(tmp_path / "s")) as db:
        assert db.stats()["segments"] == 2 and len(db) == 4


def test_store_policy_runs_on_compact(tmp_path, clock):
    with _store(tmp_path, clock, compaction_policy=_bump_episodes) as db:
        db.insert([Item(vector=vec(i)) for i in range(3)])
        db.compact()
        db.compact()
        assert [round(i.kappa, 6) for i in db.scan()] == [0.3] * 3
        db.compact(lambda rows: None)  # an explicit policy replaces the store's
        assert [round(i.kappa, 6) for i in db.scan()] == [0.3] * 3


def test_kappa_is_clipped_to_unit_interval(tmp_path, clock):
    with _store(tmp_path, clock) as db:
        db.insert(Item(vector=vec(0), id="a", kappa=0.95))

        def boost(rows: MergedRows) -> None:
            rows.kappa += 0.5

        db.compact(boost)
        assert db.get("a").kappa == 1.0


def test_a_policys_rows_keep_the_hnsw_index_extended(tmp_path, clock):
    """A policy that adds items and moves κ: the merged rows are assembled with the input's vectors first,
    so the output extends the input's HNSW index (before, it was rebuilt); searches through the index find
    old and new items by their own vectors."""
    from t4dm.storage import HNSWParams

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((400, DIM)).astype(np.float32)
    params = HNSWParams(min_rows=64)
    with _store(tmp_path, clock, hnsw=params, index_build="sync") as db:
        ids = db.insert_batch(vectors)
        db.compact()
        built = []
        real_build = db._build_index
        db._build_index = lambda segment, base, count: (
            built.append(base is not None),
            real_build(segment, base, count),
        )

        def policy(rows: MergedRows) -> None:
            live = rows.is_current & rows.is_item
            rows.kappa[live] = 0.3
            rows.add(Item(vector=vec(999), id="proto", kind="prototype", kappa=0.85), derived_from=ids[:3])

        db.compact(policy)
        assert built == [True]  # extended, not built anew
        [segment] = db._segments
        assert segment.index is not None and segment.index.ntotal == segment.vectors.shape[0]
        for i in (0, 123, 399):
            assert db.search(vectors[i], k=1)[0].id == ids[i]
        assert db.search(vec(999), k=1)[0].id == "proto"
        assert db.count(kappa=(0.3, 0.3)) == 400
