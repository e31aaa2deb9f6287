"""SEARCH: HNSW per segment plus the memtable, filters inside the search, recall against exact search."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, UTC, Item

from .conftest import DIM, vec

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def clustered(n: int, dim: int, seed: int, clusters: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Points around random centres (the shape of real embeddings), and held-out queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    queries = centres[rng.integers(0, clusters, 200)] + 0.6 * rng.standard_normal((200, dim)).astype(
        np.float32
    )
    return points, queries


def brute_force(
    vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    return np.argsort(-scores, kind="stable")[:k].tolist()


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """50,000 clustered 128-d vectors over ten users and 100 days, in one indexed segment."""
    n, dim = 50_000, 128
    points, queries = clustered(n, dim, seed=7)
    users = [f"user{i % 10}" for i in range(n)]
    days = np.random.default_rng(8).integers(0, 100, n)
    path = str(tmp_path_factory.mktemp("search") / "store")
    db = T4DX.open(path, dim=dim, durability="none", index_build="sync")
    ids = db.insert_batch(
        points,
        [{"user_id": u, "i": i} for i, u in enumerate(users)],
        valid_from=[T0 + timedelta(days=int(d)) for d in days],
    )
    db.compact()
    yield db, ids, points, queries, np.asarray(users), days
    db.close()


def test_recall_unfiltered(big_store):
    db, ids, points, queries, _, _ = big_store
    assert db._snap.segments[0].index is not None  # the HNSW path, not exact scoring
    found = [[h.id for h in db.search(q, k=10)] for q in queries]
    truth = [[ids[i] for i in brute_force(points, q, 10)] for q in queries]
    assert recall(found, truth) >= 0.95
    exact = [[h.id for h in db.search(q, k=10, exact=True)] for q in queries[:20]]
    assert recall(exact, truth[:20]) == 1.0


def test_recall_with_a_one_percent_filter(big_store):
    """One user of ten and a 10-day window of 100: about 1 % of the items."""
    db, ids, points, queries, users, days = big_store
    window = (T0 + timedelta(days=50), T0 + timedelta(days=60))
    allowed = (users == "user3") & (days >= 50) & (days < 60)
    assert 0.005 < allowed.mean() < 0.015
    found, truth = [], []
    for q in queries:
        hits = db.search(q, k=10, where={"user_id": "user3"}, valid_from=window)
        assert all(
            h.item.fields["user_id"] == "user3" and window[0] <= h.item.valid_from < window[1] for h in hits
        )
        found.append([h.id for h in hits])
        truth.append([ids[i] for i in brute_force(points, q, 10, allowed)])
    assert recall(found, truth) >= 0.99


def test_recall_with_a_ten_percent_filter(big_store):
    """One user of ten: the HNSW walk with an ID selector (too many rows for exact scoring)."""
    db, ids, points, queries, users, _ = big_store
    allowed = users == "user5"
    found = [[h.id for h in db.search(q, k=10, where={"user_id": "user5"})] for q in queries[:50]]
    truth = [[ids[i] for i in brute_force(points, q, 10, allowed)] for q in queries[:50]]
    assert recall(found, truth) >= 0.95


def test_composite_tag_time_index_finds_exactly_the_matching_rows(big_store):
    """A tag with a valid-time bound is answered by the (tag, valid_from) index alone, and gives the same
    rows as checking the columns (which a segment written without that index does)."""
    from t4dm.storage.query import _candidates, match_rows, parse_filter

    db, _, _, _, users, days = big_store
    segment = db._snap.segments[0]
    cases = [
        ({"user_id": "user3"}, None, (T0 + timedelta(days=50), T0 + timedelta(days=60))),
        ({"user_id": "user7"}, T0 + timedelta(days=20, hours=1), None),
        ({"user_id": "user1"}, T0 + timedelta(days=80), (T0 + timedelta(days=30), T0 + timedelta(days=90))),
        ({"user_id": "user2"}, None, (T0 + timedelta(days=200), T0 + timedelta(days=210))),  # no row
    ]
    for where, valid_at, window in cases:
        f = parse_filter(None, None, where, valid_at, None, window)
        code = segment.tag_code(0, where["user_id"])
        rows, covered = _candidates(segment, f, [(0, code)])
        expected = users == where["user_id"]
        if window is not None:
            expected &= (days >= (window[0] - T0).days) & (days < (window[1] - T0).days)
        if valid_at is not None:
            expected &= days <= (valid_at - T0).days
        assert ("tag", 0) in covered or len(rows) == 0  # (an empty window: the time index alone)
        assert len(rows) == expected.sum()  # the candidates are the answer: nothing else read
        with_index = np.sort(match_rows(segment, segment.n, db._snap.seq, f)[0])
        saved = segment.tag_valid_from
        segment.tag_valid_from = [None] * len(saved)  # as a segment written before the index
        try:
            without = np.sort(match_rows(segment, segment.n, db._snap.seq, f)[0])
        finally:
            segment.tag_valid_from = saved
        np.testing.assert_array_equal(with_index, without)
        assert with_index.size == expected.sum()


def test_scores_are_cosine_and_sorted(big_store):
    db, _, _, queries, _, _ = big_store
    hits = db.search(queries[0], k=5)
    unit_q = queries[0] / np.linalg.norm(queries[0])
    for hit in hits:
        v = hit.item.vector
        assert hit.score == pytest.approx(float(v @ unit_q / np.linalg.norm(v)), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _small(tmp_path, clock, **options):
    return T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock, index_build="sync", **options)


def test_search_sees_memtable_segments_and_filters(tmp_path, clock):
    with _small(tmp_path, clock, hnsw={"min_rows": 16}) as db:
        rng = np.random.default_rng(0)
        base = rng.standard_normal((300, DIM)).astype(np.float32)
        db.insert_batch(
            base[:200],
            [{"user_id": f"u{i % 2}", "i": i} for i in range(200)],
            ids=[f"a{i}" for i in range(200)],
        )
        db.flush()  # 200 rows: an indexed segment
        db.insert_batch(base[200:], [{"user_id": "u0", "i": i} for i in range(200, 300)], ids=[f"a{i}" for i in range(200, 300)],
                        kind="entity", kappa=0.9)  # fmt: skip
        [top] = db.search(base[250], k=1)
        assert top.id == "a250" and top.score == pytest.approx(1.0, abs=1e-5)
        [top] = db.search(base[17], k=1)
        assert top.id == "a17"
        assert all(h.item.kind == "entity" for h in db.search(base[17], k=5, kind="entity"))
        assert all(h.item.kappa >= 0.8 for h in db.search(base[17], k=5, kappa=(0.8, 1.0)))
        assert all(
            h.item.fields["user_id"] == "u1" for h in db.search(base[17], k=5, where={"user_id": "u1"})
        )
        assert [h.id for h in db.search(base[17], k=3, where={"i": 17})] == ["a17"]  # a payload-checked field
        assert db.search(base[17], k=5, where={"user_id": "nobody"}) == []
        assert len(db.search(base[0], k=1000)) == 300


def test_deleted_and_superseded_versions_are_not_found(tmp_path, clock):
    with _small(tmp_path, clock, hnsw={"min_rows": 16}) as db:
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((100, DIM)).astype(np.float32)
        db.insert_batch(vectors, ids=[f"k{i}" for i in range(100)])
        db.flush()
        before = clock.now
        clock.advance()
        db.delete("k5")
        moved = rng.standard_normal(DIM).astype(np.float32)
        db.update_fields("k6", vector=moved)
        for settle in (lambda: None, db.flush, db.compact):
            settle()
            assert "k5" not in [h.id for h in db.search(vectors[5], k=5)]
            [top] = db.search(vectors[6], k=1)
            assert top.id != "k6" or top.score < 0.999  # the old vector of k6 is gone
            [top] = db.search(moved, k=1)
            assert top.id == "k6" and top.score == pytest.approx(1.0, abs=1e-5)
            # what the store knew before: k5 alive, k6 at its old vector
            [top] = db.search(vectors[5], k=1, known_at=before)
            assert top.id == "k5"
            [top] = db.search(vectors[6], k=1, known_at=before)
            assert top.id == "k6" and top.score == pytest.approx(1.0, abs=1e-5)


def test_compaction_extends_the_largest_index_and_skips_orphans(tmp_path, clock):
    with _small(tmp_path, clock, hnsw={"min_rows": 16}, max_segments=64) as db:
        rng = np.random.default_rng(2)
        vectors = rng.standard_normal((400, DIM)).astype(np.float32)
        db.insert_batch(vectors[:300], ids=[f"k{i}" for i in range(300)])
        db.flush()
        db.insert_batch(vectors[300:], ids=[f"k{i}" for i in range(300, 400)])
        db.delete([f"k{i}" for i in range(0, 30)])  # 10 % of the big segment's vectors become orphans
        db.flush()
        big = db._snap.segments[0]
        db.compact()
        [merged] = db._snap.segments
        assert merged.vectors.shape[0] == 400 + 0  # the base block kept whole: its 30 orphans stay
        np.testing.assert_array_equal(merged.vectors[:300], big.vectors)
        assert merged.index is not None and merged.index.ntotal == 400
        for i in (0, 29):
            assert f"k{i}" not in [h.id for h in db.search(vectors[i], k=10)]
        for i in (30, 150, 350):
            [top] = db.search(vectors[i], k=1)
            assert top.id == f"k{i}"
        assert len(db.search(vectors[0], k=1000)) == 370


def test_index_is_saved_and_not_rebuilt_on_reopen(tmp_path, clock):
    path = str(tmp_path / "s")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, DIM)).astype(np.float32)
    with T4DX.open(path, dim=DIM, clock=clock, index_build="sync", hnsw={"min_rows": 100}) as db:
        db.insert_batch(vectors)
        db.flush()
        [segment] = db._snap.segments
        index_file = segment.index_path
        assert os.path.exists(index_file)
    stamp = os.stat(index_file).st_mtime_ns
    with T4DX.open(path, clock=clock, hnsw={"min_rows": 100}) as db:
        assert db._snap.segments[0].index is not None  # loaded at open, no build queued
        assert not db._index_jobs
        assert db.search(vectors[9], k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    assert os.stat(index_file).st_mtime_ns == stamp
    os.remove(index_file)  # a lost index is rebuilt, not an error
    with T4DX.open(path, clock=clock, hnsw={"min_rows": 100}) as db:
        assert db.wait_indexed(timeout=60)
        assert db._snap.segments[0].index is not None and os.path.exists(index_file)


def test_background_build_searches_exactly_until_ready(tmp_path, clock):
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock, hnsw={"min_rows": 100}) as db:
        ids = db.insert_batch(vectors)
        db.flush()
        assert db.search(vectors[42], k=1)[0].id == ids[42]  # right whether or not the index is ready
        assert db.wait_indexed(timeout=120)
        assert db._snap.segments[0].index is not None
        assert db.search(vectors[42], k=1)[0].id == ids[42]


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"vector": np.zeros(DIM + 1)}, errors.DimensionMismatch, "vector"),
        ({"vector": np.full(DIM, np.nan)}, errors.InvalidVector, "vector"),
        ({"vector": np.zeros(DIM)}, errors.InvalidVector, "vector"),
        ({"vector": vec(0), "k": 0}, errors.InvalidInput, "k"),
        ({"vector": vec(0), "k": 2.5}, errors.InvalidInput, "k"),
        ({"vector": vec(0), "ef": 0}, errors.InvalidInput, "ef"),
        ({"vector": vec(0), "valid_at": datetime(2025, 1, 1)}, errors.InvalidTime, "valid_at"),
        ({"vector": vec(0), "valid_from": (T0,)}, errors.InvalidInput, "valid_from"),
        ({"vector": vec(0), "valid_from": (T0, T0 - timedelta(1))}, errors.InvalidInput, "valid_from"),
        ({"vector": vec(0), "kappa": (0.9, 0.1)}, errors.InvalidInput, "kappa"),
    ],
    ids=["dim", "nan", "zero", "k0", "k-float", "ef", "naive", "range-arity", "range-order", "kappa"],
)
def test_bad_search_arguments(db, kwargs, error, field):
    db.insert(Item(vector=vec(1)))
    with pytest.raises(error) as info:
        db.search(**kwargs)
    assert info.value.field == field


def test_bad_hnsw_settings(tmp_path):
    for bad in ({"m": 1}, {"ef_search": 0}, {"nope": 3}, {"min_rows": -1}):
        with pytest.raises(errors.InvalidInput, match="hnsw"):
            T4DX.open(str(tmp_path / "s"), dim=DIM, hnsw=bad)
    with pytest.raises(errors.InvalidInput, match="index_build"):
        T4DX.open(str(tmp_path / "s"), dim=DIM, index_build="later")


def test_hits_build_their_items_when_first_read_as_the_search_saw_them(tmp_path, clock, monkeypatch):
    """A search decodes ids and scores only; the first hit.item builds the items of all hits from that place
    (one batch); the items are the versions the search saw, after updates, compaction and close."""
    db = T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock)
    ids = db.insert_batch(np.stack([vec(i) for i in range(6)]), [{"text": f"t{i}"} for i in range(6)])
    db.flush()
    clock.advance()
    db.insert(Item(vec(6), id="fresh", fields={"text": "in the memtable"}))
    builds = []
    original = T4DX._items
    monkeypatch.setattr(
        T4DX, "_items", staticmethod(lambda *a, **k: (builds.append(1), original(*a, **k))[1])
    )
    hits = db.search(vec(2), k=7)
    assert builds == [] and {h.id for h in hits} == {*ids, "fresh"} and hits[0].id == ids[2]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    seen = hits[0].item
    assert builds == [1] and seen.fields == {"text": "t2"} and seen.id == ids[2]
    assert [h.item.id for h in hits if h.id != "fresh"] and builds == [1]  # the segment's hits built once
    assert (
        next(h for h in hits if h.id == "fresh").item.fields == {"text": "in the memtable"}
        and len(builds) == 2
    )
    # later writes, a compaction that unlinks the segment, and close: unread hits keep what the search saw
    late = db.search(vec(3), k=1)
    clock.advance()
    db.update_fields(ids[3], {"text": "t3, revised"})
    db.flush()
    db.compact()
    db.close()
    [hit] = late
    assert hit.item.fields == {"text": "t3"} and hit.item.superseded_at is None
    np.testing.assert_array_equal(hit.item.vector, vec(3))
    assert hit == late[0] and "score" in repr(hit)
    with pytest.raises(TypeError):
        from t4dm.storage import Hit

        Hit("x", 1.0)


def test_hit_load_builds_only_the_hits_asked_for(tmp_path, clock, monkeypatch):
    """Hit.load(some hits): their items, in order, one batch per place, the other hits' not built (a later
    hit.item builds those, keeping the ones handed out); items are the versions the search saw."""
    from t4dm.storage import Hit

    db = T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock)
    ids = db.insert_batch(np.stack([vec(i) for i in range(8)]), [{"text": f"t{i}"} for i in range(8)])
    db.flush()
    db.insert(Item(vec(8), id="fresh", fields={"text": "in the memtable"}))
    hits = db.search(vec(2), k=9)
    kept = [h for h in hits if h.id in (ids[5], "fresh", ids[1])]
    clock.advance()
    db.update_fields(ids[5], {"text": "t5, revised"})
    built = []
    original = T4DX._items
    monkeypatch.setattr(
        T4DX,
        "_items",
        staticmethod(lambda s, rows, *a, **k: (built.append(len(rows)), original(s, rows, *a, **k))[1]),
    )
    items = Hit.load(kept)
    assert [i.id for i in items] == [h.id for h in kept] and sorted(built) == [1, 2]
    assert {i.id: i.fields["text"] for i in items}[ids[5]] == "t5"  # as the search saw it
    assert Hit.load(kept) == items and sorted(built) == [1, 2]  # built once
    other = next(h for h in hits if h.id == ids[2])
    assert other.item.fields == {"text": "t2"} and sorted(built) == [1, 2, 8]  # the segment's hits, all
    assert all(h.item is i for h, i in zip(kept, items, strict=True))  # handed out already: the same objects
    assert all(h.item.id == h.id for h in hits) and len(built) == 3
    assert Hit.load([]) == [] and Hit.load([Hit("x", 0.5, items[0])]) == [items[0]]
    db.close()


def test_threads_reading_the_same_hits_get_the_same_items(tmp_path, clock):
    from concurrent.futures import ThreadPoolExecutor

    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        db.insert_batch(np.stack([vec(i) for i in range(40)]), [{"n": i} for i in range(40)])
        db.flush()
        for round in range(20):
            hits = db.search(vec(round), k=10)
            with ThreadPoolExecutor(8) as pool:
                seen = list(pool.map(lambda i, hits=hits: hits[i % 10].item.fields["n"], range(80)))
            assert seen == [hits[i % 10].item.fields["n"] for i in range(80)]
