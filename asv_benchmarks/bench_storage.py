"""airspeed velocity suite for T4DX (``make asv``; ``t4dm bench storage`` runs the peers beside it).

Seeded data, JIT warm-up inside ``setup``; sizes kept small so the suite runs in minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile

import numpy as np

from t4dm.storage import T4DX, BloomFilter, Item


def _data(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    fields = [{"text": f"memory {i}", "user_id": f"user{i % 10}"} for i in range(n)]
    return vectors, fields, rng.random(n)


def _warm(dim: int) -> None:
    root = tempfile.mkdtemp()
    vectors, fields, _ = _data(500, dim, 1)
    with T4DX.open(root + "/w", dim=dim, durability="none", memtable_bytes=1 << 18) as db:
        ids = db.insert_batch(vectors, fields)
        db.insert_batch(vectors[:10], fields[:10], ids=ids[:10])
        db.flush()
        db.compact()
        db.get(ids[0])
        sum(1 for _ in db.scan(kappa=(0.0, 0.5)))
    shutil.rmtree(root)


def _compacted_store(n: int) -> tuple[str, T4DX, list[str]]:
    """A folder, a store in it of ``n`` seeded 384-d items with κ, compacted, and the items' ids."""
    vectors, fields, kappa = _data(n, 384)
    _warm(384)
    root = tempfile.mkdtemp()
    db = T4DX.open(root + "/s", dim=384, durability="none")
    ids = db.insert_batch(vectors, fields, kappa=kappa)
    db.compact()
    return root, db, ids


class Insert:
    params = ([10_000, 50_000], ["batch", "sync"])
    param_names = ["n", "durability"]
    timeout = 300

    def setup(self, n: int, durability: str) -> None:
        self.vectors, self.fields, self.kappa = _data(n, 384)
        _warm(384)
        self.root = tempfile.mkdtemp()
        self.count = 0

    def teardown(self, n: int, durability: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _store(self, durability: str) -> T4DX:
        self.count += 1
        return T4DX.open(f"{self.root}/{self.count}", dim=384, durability=durability)

    def time_insert_batch_one_call(self, n: int, durability: str) -> None:
        with self._store(durability) as db:
            db.insert_batch(self.vectors, self.fields, kappa=self.kappa)

    def time_insert_batch_1000(self, n: int, durability: str) -> None:
        with self._store(durability) as db:
            for i in range(0, n, 1000):
                db.insert_batch(self.vectors[i : i + 1000], self.fields[i : i + 1000])


class Changes:
    """The change feed and its replay: a store with 10,000 items, 2,000 revisions and 1,000 deletions."""

    timeout = 300

    def setup(self) -> None:
        vectors, fields, _ = _data(10_000, 384)
        _warm(384)
        self.root = tempfile.mkdtemp()
        self.count = 0
        self.db = T4DX.open(self.root + "/source", dim=384, durability="none")
        ids = self.db.insert_batch(vectors, fields)
        for i in range(0, 2_000, 100):
            self.db.insert_batch(vectors[i : i + 100] * 0.5, fields[i : i + 100], ids=ids[i : i + 100])
        self.db.delete(ids[5_000:6_000])
        self.changes = list(self.db.changes())

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_changes(self) -> None:
        sum(1 for _ in self.db.changes())

    def time_replay_into_a_new_store(self) -> None:
        self.count += 1
        with T4DX.open(f"{self.root}/{self.count}", dim=384, durability="none") as copy:
            copy.replay(self.changes)


class Read:
    params = [50_000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n: int) -> None:
        self.root, self.db, self.ids = _compacted_store(n)
        rng = np.random.default_rng(2)
        self.sample = [self.ids[i] for i in rng.integers(0, n, 1000)]

    def teardown(self, n: int) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_get_1000(self, n: int) -> None:
        get = self.db.get
        for id in self.sample:
            get(id)

    def time_get_many_1000(self, n: int) -> None:
        self.db.get_many(self.sample)

    def time_matching_1000(self, n: int) -> None:
        self.db.matching(self.sample, where={"user_id": "user3"}, kappa=(0.0, 0.5))

    def time_scan_kappa_10pct(self, n: int) -> None:
        for _ in self.db.scan(kappa=(0.0, 0.1)):
            pass

    def time_scan_user(self, n: int) -> None:
        for _ in self.db.scan(where={"user_id": "user3"}):
            pass


class Kappa:
    """UPDATE_KAPPA: κ overlays written, the κ index read with moved rows, and compactions whose policy moves
    a tenth of the items' κ (consolidation's NREM: κ overlays written for the change feed) or adds a prototype
    (REM: the output extends the input's HNSW index)."""

    params = [50_000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n: int) -> None:
        self.root, self.db, self.ids = _compacted_store(n)
        self.db.wait_indexed()
        rng = np.random.default_rng(3)
        self.updates = [
            (self.ids[i], float(k)) for i, k in zip(rng.integers(0, n, 1000), rng.random(1000), strict=True)
        ]
        # the peer: the same κ as new versions (what update_fields(kappa=) writes), one transaction
        self.versions = [
            dataclasses.replace(self.db.get(id), kappa=k, recorded_at=None, superseded_at=None)
            for id, k in self.updates
        ]
        moved = rng.choice(n, 5000, replace=False)
        self.db.update_kappas(
            [(self.ids[i], float(k)) for i, k in zip(moved, rng.random(5000), strict=True)], absolute=True
        )

    def teardown(self, n: int) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_update_kappas_1000(self, n: int) -> None:
        self.db.update_kappas(self.updates, absolute=True)

    def time_new_versions_1000(self, n: int) -> None:
        self.db.insert(self.versions)

    def time_scan_kappa_10pct_5000_moved(self, n: int) -> None:
        for _ in self.db.scan(kappa=(0.0, 0.1)):
            pass

    def time_compaction_adding_a_prototype(self, n: int) -> None:
        """A policy as REM: one prototype derived from 50 items; the output's HNSW index included."""

        def rem(rows) -> None:
            live = np.flatnonzero(rows.is_current & rows.is_item)[:50]
            prototype = Item(rows.vectors(live).mean(axis=0), id="prototype", kind="prototype", kappa=0.85)
            rows.add(prototype, derived_from=[rows.ids[i] for i in live])

        self.db.compact(policy=rem)
        self.db.wait_indexed()

    def time_compaction_moving_a_tenth(self, n: int) -> None:
        def nrem(rows) -> None:
            pick = rows.is_current & rows.is_item & (np.arange(rows.n) % 10 == 0)
            rows.kappa[pick] = np.minimum(1.0, rows.kappa[pick] + 0.01)

        self.db.compact(policy=nrem)


class _OneShotOnCompacted:
    """Benchmarks of one call each (``number = 1``) on a compacted 50k store made in ``setup``."""

    params = [50_000]
    param_names = ["n"]
    timeout = 300
    number = 1
    repeat = (5, 20, 60.0)

    def teardown(self, n: int) -> None:
        for name in ("reader", "db"):
            if hasattr(self, name):
                getattr(self, name).close()
        shutil.rmtree(self.root, ignore_errors=True)


class Erase(_OneShotOnCompacted):
    """ERASE of 100 items of a compacted 50k store whose items are chained by ``next`` edges: with their
    edges (the default: each id's edges found in every source's CSR and erased, a second transaction),
    leaving them, and the peer, DELETE (a tombstone each, one transaction). Each call takes ids no call
    took before."""

    def setup(self, n: int) -> None:
        from t4dm.storage import Edge

        self.root, self.db, self.ids = _compacted_store(n)
        self.db.add_edges([Edge(a, b, "next") for a, b in zip(self.ids[:-1], self.ids[1:], strict=True)])
        self.db.flush()
        self.db.compact()
        self.db.wait_indexed()
        chunks = [self.ids[i : i + 100] for i in range(0, n, 100)]
        self.chunks = {name: iter(chunks[k::3]) for k, name in enumerate(("edges", "items", "delete"))}
        self.db.erase(next(self.chunks["edges"]))  # warm-up (Numba)

    def time_erase_100_with_edges(self, n: int) -> None:
        self.db.erase(next(self.chunks["edges"]))

    def time_erase_100_leaving_edges(self, n: int) -> None:
        self.db.erase(next(self.chunks["items"]), edges=False)

    def time_delete_100(self, n: int) -> None:
        self.db.delete(next(self.chunks["delete"]))


class Compaction:
    params = [50_000]
    param_names = ["n"]
    timeout = 300
    number = 1
    repeat = 3

    def setup(self, n: int) -> None:
        self.vectors, self.fields, _ = _data(n, 384)
        _warm(384)
        self.root = tempfile.mkdtemp()
        self.db = T4DX.open(self.root + "/s", dim=384, durability="none", max_segments=64)
        for i in range(0, n, n // 4):
            self.db.insert_batch(self.vectors[i : i + n // 4], self.fields[i : i + n // 4])
            self.db.flush()

    def teardown(self, n: int) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_full_compaction(self, n: int) -> None:
        self.db.compact()


class Bloom:
    params = [1_000_000]
    param_names = ["keys"]

    def setup(self, keys: int) -> None:
        rng = np.random.default_rng(3)
        hi = rng.integers(0, 2**63, keys, dtype=np.uint64)
        lo = rng.integers(0, 2**63, keys, dtype=np.uint64)
        self.bloom = BloomFilter.build(hi, lo, 0.01)
        self.q_hi = rng.integers(0, 2**63, keys, dtype=np.uint64)
        self.q_lo = rng.integers(0, 2**63, keys, dtype=np.uint64)
        self.bloom.contains(self.q_hi[:10], self.q_lo[:10])

    def time_contains_batch(self, keys: int) -> None:
        self.bloom.contains(self.q_hi, self.q_lo)

    def track_false_positive_rate(self, keys: int) -> float:
        return float(self.bloom.contains(self.q_hi, self.q_lo).mean())


def _clustered(n: int, dim: int, seed: int = 0, clusters: int = 200):
    """Points around ``clusters`` centres (as ``t4dm bench search``), 50 held-out queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    queries = centres[rng.integers(0, clusters, 50)] + 0.6 * rng.standard_normal((50, dim), dtype=np.float32)
    return points, queries


class Search:
    """SEARCH top-10 over one compacted segment with its HNSW index (``t4dm bench search`` has the peers and
    100,000 items); the filter keeps one user of ten and a tenth of the days (about 1 %)."""

    params = [20_000]
    param_names = ["n"]
    timeout = 300

    def setup(self, n: int) -> None:
        from datetime import datetime, timedelta, timezone

        points, self.queries = _clustered(n, 384)
        rng = np.random.default_rng(1)
        self.t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
        days = rng.integers(0, 100, n)
        self.root = tempfile.mkdtemp()
        self.db = T4DX.open(self.root + "/s", dim=384, durability="none")
        self.db.insert_batch(
            points,
            [{"user_id": f"user{u}"} for u in rng.integers(0, 10, n)],
            valid_from=[self.t0 + timedelta(days=int(d)) for d in days],
        )
        self.db.compact()
        self.db.wait_indexed()
        self.window = (self.t0 + timedelta(days=50), self.t0 + timedelta(days=60))
        self.time_search_50(n)  # JIT and index pages warmed
        self.time_filtered_search_50(n)

    def teardown(self, n: int) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_search_50(self, n: int) -> None:
        for q in self.queries:
            self.db.search(q, k=10)

    def time_filtered_search_50(self, n: int) -> None:
        for q in self.queries:
            self.db.search(q, k=10, where={"user_id": "user3"}, valid_from=self.window)


class Traverse:
    """TRAVERSE 2 hops from 1,000 seeds on a random graph of 100,000 nodes and 1,000,000 edges in one
    compacted segment (``t4dm bench graph`` has scipy beside it and 1M nodes / 10M edges)."""

    params = [100_000]
    param_names = ["nodes"]
    timeout = 600
    number = 1

    def setup(self, nodes: int) -> None:
        rng = np.random.default_rng(4)
        names = [f"n{i}" for i in range(nodes)]
        src, dst = rng.integers(0, nodes, 10 * nodes), rng.integers(0, nodes, 10 * nodes)
        self.root = tempfile.mkdtemp()
        self.db = T4DX.open(self.root + "/g", dim=4, durability="none", memtable_bytes=256 << 20)
        self.db.add_edges_batch([names[j] for j in src], [names[j] for j in dst], check_endpoints=False)
        self.db.compact()
        self.seeds = [names[j] for j in rng.choice(nodes, 1000, replace=False)]
        self.db.traverse(self.seeds, 2)

    def teardown(self, nodes: int) -> None:
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_traverse_2_hops(self, nodes: int) -> None:
        self.db.traverse(self.seeds, 2)

    def time_neighbours_1000(self, nodes: int) -> None:
        self.db.neighbours(self.seeds)


class ReadOnly(_OneShotOnCompacted):
    """A reader beside the writer (``read_only=True``) of a compacted 50k store: its open, a refresh after one
    insert (the new log record applied), and the peer, loading the store again (what a refresh does after a
    flush or a compaction)."""

    def setup(self, n: int) -> None:
        self.root, self.db, self.ids = _compacted_store(n)
        self.db.wait_indexed()
        self.reader = T4DX.open(self.root + "/s", read_only=True)
        self.vectors = _data(64, 384, 2)[0]
        self.next = iter(range(10**9))

    def time_open_read_only(self, n: int) -> None:
        T4DX.open(self.root + "/s", read_only=True).close()

    def time_refresh_after_one_insert(self, n: int) -> None:
        self.db.insert(Item(vector=self.vectors[next(self.next) % 64]))
        self.reader.refresh()

    def time_reload_after_one_insert(self, n: int) -> None:
        self.db.insert(Item(vector=self.vectors[next(self.next) % 64]))
        self.reader.close()
        self.reader = T4DX.open(self.root + "/s", read_only=True)
