"""``t4dm bench storage``: T4DX beside the peers a user would pick instead, in one process.

Measures, on ``n`` items of ``dim`` float32 dimensions with a text and a user id each:

* insert throughput: the columnar ``insert_batch`` with ``durability="batch"`` and ``"sync"`` (batches of
  1,000), ``Item`` inserts in batches of 1 (``"batch"`` and ``"sync"``), and the same bulk load into
  LanceDB (``create_table`` from Arrow, no index) and Chroma (``collection.add``);
* GET latency p50 / p99 from a compacted segment and from the memtable;
* SCAN with a κ range (10 % of the items), items per second;
* compaction throughput in MB/s of input;
* the Bloom filter against ``rbloom`` at 1 % false positives on 1M keys: probes per second for a batch
  of 1M absent keys and the measured false-positive rate.

Peers are optional imports; a missing one is reported and skipped. Results print as they come and,
with ``json_path``, go to a JSON file.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from t4dm.storage import T4DX, BloomFilter, Item

__all__ = ["run_storage_bench"]


def _say(text: str) -> None:
    print(text, flush=True)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fields = [
        {"text": f"memory number {i} about topic {i % 97}", "user_id": f"user{i % 10}"} for i in range(n)
    ]
    kappa = rng.random(n)
    return vectors, fields, kappa


def _warm_up(root: str, dim: int) -> None:
    """Compile (or load from Numba's cache) every jitted function once, outside the timings."""
    vectors, fields, _ = _data(2000, dim, seed=99)
    path = os.path.join(root, "warm-up")
    with T4DX.open(path, dim=dim, durability="batch", memtable_bytes=1 << 20) as db:
        ids = db.insert_batch(vectors, fields)  # bulk ingest
        db.insert_batch(vectors[:100], fields[:100], ids=ids[:100])  # memtable, supersession
        db.flush()
        db.compact()
        db.get(ids[5])
        db.delete(ids[:3])
        sum(1 for _ in db.scan(kappa=(0.0, 0.5), where={"user_id": "user1"}))
    shutil.rmtree(path)


def _bench_inserts(
    root: str, vectors: np.ndarray, fields: list[dict], kappa: np.ndarray, results: dict
) -> str:
    n, dim = vectors.shape
    # columnar bulk insert in one call: straight to a fsynced segment (bulk ingest); median of 3 stores
    rates = []
    for attempt in range(3):
        path = os.path.join(root, f"t4dx-bulk{attempt}")
        with T4DX.open(path, dim=dim, durability="batch") as db:
            seconds, _ = _timed(lambda: db.insert_batch(vectors, fields, kappa=kappa))
        rates.append(_rate(n, seconds))
        if attempt < 2:
            shutil.rmtree(path)
    results["insert_batch_one_call_items_per_s"] = statistics.median(rates)
    results["insert_batch_one_call_runs"] = rates
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    _say(
        f"insert_batch  one call of {n:,} (bulk ingest, fsynced segment): {statistics.median(rates):>10,.0f} items/s (runs: {runs})"
    )

    # columnar inserts in batches of 10,000 through the WAL and the memtable, group commit
    path_wal = os.path.join(root, "t4dx-batch")
    with T4DX.open(path_wal, dim=dim, durability="batch") as db:
        seconds, _ = _timed(
            lambda: [
                db.insert_batch(vectors[i : i + 10_000], fields[i : i + 10_000], kappa=kappa[i : i + 10_000])
                for i in range(0, n, 10_000)
            ]
        )
        flush_s, _ = _timed(db.flush)
    results["insert_batch_durability_batch_items_per_s"] = _rate(n, seconds)
    results["insert_batch_then_flush_items_per_s"] = _rate(n, seconds + flush_s)
    _say(f"insert_batch  durability=batch  batches of 10,000: {_rate(n, seconds):>12,.0f} items/s"
         f"   (with the final flush: {_rate(n, seconds + flush_s):,.0f})")  # fmt: skip
    shutil.rmtree(path_wal)

    sync_n = min(n, 20_000)
    path_sync = os.path.join(root, "t4dx-sync")
    with T4DX.open(path_sync, dim=dim, durability="sync") as db:
        seconds, _ = _timed(
            lambda: [
                db.insert_batch(vectors[i : i + 1000], fields[i : i + 1000]) for i in range(0, sync_n, 1000)
            ]
        )
    results["insert_batch_durability_sync_batch1000_items_per_s"] = _rate(sync_n, seconds)
    _say(f"insert_batch  durability=sync   batches of 1,000:  {_rate(sync_n, seconds):>12,.0f} items/s")
    shutil.rmtree(path_sync)

    for durability, count in (("batch", min(n, 20_000)), ("sync", min(n, 2_000))):
        p = os.path.join(root, f"t4dx-one-{durability}")
        with T4DX.open(p, dim=dim, durability=durability) as db:
            items = [Item(vector=vectors[i], fields=fields[i]) for i in range(count)]
            seconds, _ = _timed(lambda: [db.insert(item) for item in items])  # noqa: B023 - run at once
        results[f"insert_item_durability_{durability}_batch1_items_per_s"] = _rate(count, seconds)
        _say(
            f"insert(Item)  durability={durability:<5}  batches of 1:      {_rate(count, seconds):>12,.0f} items/s"
        )
        shutil.rmtree(p)

    count = min(n, 20_000)
    p = os.path.join(root, "t4dx-items-1000")
    with T4DX.open(p, dim=dim, durability="batch") as db:
        items = [Item(vector=vectors[i], fields=fields[i]) for i in range(count)]
        seconds, _ = _timed(lambda: [db.insert(items[i : i + 1000]) for i in range(0, count, 1000)])
    results["insert_item_durability_batch_batch1000_items_per_s"] = _rate(count, seconds)
    _say(f"insert(Items) durability=batch  batches of 1,000:  {_rate(count, seconds):>12,.0f} items/s")
    shutil.rmtree(p)
    return path


def _latencies(fn: Callable[[str], Any], ids: list[str]) -> tuple[float, float]:
    samples = np.empty(len(ids), dtype=np.float64)
    clock = time.perf_counter_ns
    for j, id in enumerate(ids):
        t = clock()
        fn(id)
        samples[j] = clock() - t
    return float(np.percentile(samples, 50)) / 1e3, float(np.percentile(samples, 99)) / 1e3


def _bench_reads(path: str, n: int, results: dict) -> None:
    with T4DX.open(path) as db:
        stats = db.compact()
        results["compaction_mb_per_s_1_segment"] = stats.mb_per_s
        ids = [item.id for item in db.scan(limit=n)]
        rng = np.random.default_rng(1)
        sample = [ids[i] for i in rng.integers(0, len(ids), 20_000)]
        _latencies(db.get, sample[:2000])  # warm up
        p50, p99 = _latencies(db.get, sample)
        results["get_segment_p50_us"], results["get_segment_p99_us"] = p50, p99
        _say(f"GET from a compacted segment:   p50 {p50:6.1f} µs   p99 {p99:6.1f} µs")
        db.insert_batch(np.stack([db.get(i).vector for i in sample[:5000]]), [{"copy": True}] * 5000)
        recent = [item.id for item in db.scan(where={"copy": True})]
        p50, p99 = _latencies(db.get, recent * 4)
        results["get_memtable_p50_us"], results["get_memtable_p99_us"] = p50, p99
        _say(f"GET from the memtable:          p50 {p50:6.1f} µs   p99 {p99:6.1f} µs")
        seconds, count = _timed(lambda: sum(1 for _ in db.scan(kappa=(0.0, 0.1))))
        results["scan_kappa_10pct_items"] = count
        results["scan_kappa_10pct_items_per_s"] = _rate(count, seconds)
        results["scan_kappa_10pct_ms"] = seconds * 1e3
        _say(
            f"SCAN κ in [0, 0.1]: {count:,} items in {seconds * 1e3:.1f} ms = {_rate(count, seconds):,.0f} items/s"
        )
        seconds, count = _timed(lambda: db.count(where={"user_id": "user3"}))
        results["scan_user_10pct_items_per_s"] = _rate(count, seconds)
        _say(
            f"SCAN user_id = user3: {count:,} items in {seconds * 1e3:.1f} ms = {_rate(count, seconds):,.0f} items/s"
        )


def _bench_compaction(root: str, vectors: np.ndarray, fields: list[dict], results: dict) -> None:
    n, dim = vectors.shape
    path = os.path.join(root, "t4dx-compact")
    with T4DX.open(path, dim=dim, durability="none", max_segments=64) as db:
        step = max(1, n // 4)
        for i in range(0, n, step):
            db.insert_batch(vectors[i : i + step], fields[i : i + step])
            db.flush()
        db.update_fields(db.scan(limit=1).__next__().id, {"updated": True})
        stats = db.compact()
    results["compaction_mb_per_s"] = stats.mb_per_s
    results["compaction_segments_in"] = stats.segments_in
    results["compaction_bytes_in"] = stats.bytes_in
    _say(f"compaction of {stats.segments_in} segments ({stats.bytes_in / 1e6:,.0f} MB): "
         f"{stats.seconds * 1e3:,.0f} ms = {stats.mb_per_s:,.0f} MB/s")  # fmt: skip
    shutil.rmtree(path)


def _bench_bloom(results: dict, peers: list[str], keys: int = 1_000_000) -> None:
    rng = np.random.default_rng(7)
    hi = rng.integers(0, 2**63, keys, dtype=np.uint64)
    lo = rng.integers(0, 2**63, keys, dtype=np.uint64)
    absent_hi = rng.integers(0, 2**63, keys, dtype=np.uint64)
    absent_lo = rng.integers(0, 2**63, keys, dtype=np.uint64)
    bloom = BloomFilter.build(hi, lo, 0.01)
    bloom.contains(absent_hi[:1000], absent_lo[:1000])  # JIT warm-up
    seconds = min(_timed(lambda: bloom.contains(absent_hi, absent_lo))[0] for _ in range(3))
    fp = float(bloom.contains(absent_hi, absent_lo).mean())
    assert bloom.contains(hi, lo).all()
    ours = _rate(keys, seconds)
    results.update(bloom_keys_per_s=ours, bloom_fp_rate=fp, bloom_bits_per_key=bloom.nbytes * 8 / keys)
    _say(f"Bloom (T4DX, Numba, batch of 1M):  {ours / 1e6:7.1f} M keys/s   false positives {fp:.3%}   "
         f"{bloom.nbytes * 8 / keys:.1f} bits/key")  # fmt: skip
    if "rbloom" not in peers:
        return
    try:
        import rbloom
    except ImportError:
        _say("Bloom (rbloom): not installed (pip install rbloom), skipped")
        return
    present = [int(x) for x in hi]
    absent = [int(x) for x in absent_hi]
    peer = rbloom.Bloom(keys, 0.01)
    peer.update(present)
    seconds = min(_timed(lambda: sum(1 for k in absent if k in peer))[0] for _ in range(3))
    peer_fp = sum(1 for k in absent if k in peer) / keys
    theirs = _rate(keys, seconds)
    results.update(
        rbloom_keys_per_s=theirs, rbloom_fp_rate=peer_fp, rbloom_bits_per_key=peer.size_in_bits / keys
    )
    results["bloom_speedup_vs_rbloom"] = ours / theirs
    _say(f"Bloom (rbloom, `k in bloom` over 1M): {theirs / 1e6:7.1f} M keys/s   false positives {peer_fp:.3%}   "
         f"{peer.size_in_bits / keys:.1f} bits/key   -> T4DX {ours / theirs:.1f}x")  # fmt: skip


def _bench_lancedb(root: str, vectors: np.ndarray, fields: list[dict], results: dict) -> None:
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        _say("LanceDB: not installed (pip install lancedb), skipped")
        return
    n, dim = vectors.shape

    def ingest() -> None:
        db = lancedb.connect(os.path.join(root, "lancedb"))
        table = pa.table(
            {
                "id": pa.array([f"id{i}" for i in range(n)]),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                "text": pa.array([f["text"] for f in fields]),
                "user_id": pa.array([f["user_id"] for f in fields]),
            }
        )
        db.create_table("memories", data=table)

    seconds, _ = _timed(ingest)
    results["lancedb_ingest_items_per_s"] = _rate(n, seconds)
    _say(f"LanceDB create_table (Arrow, no index):              {_rate(n, seconds):>12,.0f} items/s")


def _bench_chroma(root: str, vectors: np.ndarray, fields: list[dict], results: dict, limit: int) -> None:
    try:
        import chromadb
    except ImportError:
        _say("Chroma: not installed (pip install chromadb), skipped")
        return
    n = min(len(vectors), limit)
    client = chromadb.PersistentClient(path=os.path.join(root, "chroma"))
    collection = client.create_collection("memories", metadata={"hnsw:space": "cosine"})
    batch = min(5000, client.get_max_batch_size())

    def ingest() -> None:
        for i in range(0, n, batch):
            collection.add(
                ids=[f"id{j}" for j in range(i, min(n, i + batch))],
                embeddings=vectors[i : i + batch],
                documents=[f["text"] for f in fields[i : i + batch]],
                metadatas=[{"user_id": f["user_id"]} for f in fields[i : i + batch]],
            )

    seconds, _ = _timed(ingest)
    results["chroma_ingest_items"] = n
    results["chroma_ingest_items_per_s"] = _rate(n, seconds)
    _say(f"Chroma collection.add ({n:,} items, batches of {batch:,}):  {_rate(n, seconds):>12,.0f} items/s")


def run_storage_bench(
    n: int = 100_000,
    dim: int = 384,
    peers: list[str] | None = None,
    json_path: str | None = None,
    workdir: str | None = None,
    chroma_limit: int = 20_000,
) -> dict[str, Any]:
    """Run the storage benchmark; returns (and optionally writes) a dict of results."""
    peers = list(peers or [])
    unknown = set(peers) - {"rbloom", "lancedb", "chroma"}
    if unknown:
        raise ValueError(f"peers={sorted(unknown)}: known peers are rbloom, lancedb, chroma")
    root = tempfile.mkdtemp(prefix="t4dm-bench-", dir=workdir)
    results: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "n": n,
        "dim": dim,
    }
    _say(f"t4dm bench storage: {n:,} items x {dim} dims, {results['machine']}, in {root}")
    try:
        vectors, fields, kappa = _data(n, dim)
        _warm_up(root, dim)
        path = _bench_inserts(root, vectors, fields, kappa, results)
        if "lancedb" in peers:
            _bench_lancedb(root, vectors, fields, results)
        if "chroma" in peers:
            _bench_chroma(root, vectors, fields, results, chroma_limit)
        for peer in ("lancedb", "chroma"):
            if f"{peer}_ingest_items_per_s" in results:
                ratio = results["insert_batch_one_call_items_per_s"] / results[f"{peer}_ingest_items_per_s"]
                results[f"insert_batch_vs_{peer}"] = ratio
                _say(f"  T4DX insert_batch (one call) / {peer} ingest: {ratio:.2f}x")
        _bench_reads(path, n, results)
        _bench_compaction(root, vectors, fields, results)
        _bench_bloom(results, peers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        _say(f"results written to {json_path}")
    return {k: (statistics.fmean([v]) if isinstance(v, np.floating) else v) for k, v in results.items()}
