"""``t4dm bench search``: T4DX SEARCH beside raw faiss HNSW, hnswlib, LanceDB and Chroma, in one process.

On ``n`` clustered vectors (``clusters`` random centres plus Gaussian noise, cosine similarity) of ``dim``
dimensions, each with a user (one of ten) and a day (one of 100), single query thread:

* ingest-to-searchable: items per second from the first insert until every item is in the ANN index;
* top-10: p50 / p95 latency and recall@10 against exact search, over 200 held-out queries;
* filtered top-10 (one user and a 10-day window: about 1 % of the items): p50 and recall@10;
* reopen: from a closed store to the first answered query; disk bytes.

Peers are optional imports (``hnswlib``, ``lancedb``, ``chromadb``); a missing one is reported and skipped.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

__all__ = ["run_search_bench"]

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
USERS = 10
DAYS = 100
WINDOW = (50, 60)  # days: with one user of ten, about 1 % of the items
FAISS_M, FAISS_EF_CONSTRUCTION, FAISS_EF_SEARCH = 32, 200, 64  # the usual faiss HNSW settings


def _say(text: str) -> None:
    print(text, flush=True)


def _data(n: int, dim: int, seed: int = 0, clusters: int = 1000):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    queries = centres[rng.integers(0, clusters, 200)] + 0.6 * rng.standard_normal((200, dim)).astype(
        np.float32
    )
    users = rng.integers(0, USERS, n)
    days = rng.integers(0, DAYS, n)
    return points, queries, users, days


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _truth(points: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None = None) -> list[set[int]]:
    unit = _unit(points)
    out = []
    for q in _unit(queries):
        scores = unit @ q
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        out.append(set(np.argsort(-scores)[:10].tolist()))
    return out


def _measure(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray, truth: list[set[int]]
) -> dict[str, float]:
    search(queries[0])  # warm-up
    latencies, recalls = [], []
    for q, t in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = search(q)
        latencies.append(time.perf_counter() - start)
        recalls.append(len(set(found) & t) / 10)
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p95_ms": float(np.percentile(latencies, 95) * 1e3),
        "recall_at_10": float(np.mean(recalls)),
    }


def _disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _report(name: str, row: dict[str, Any]) -> None:
    def fmt(key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"

    _say(
        f"{name:<28} ingest {fmt('ingest_items_per_s', ',.0f'):>8}/s  p50 {fmt('p50_ms', '.3f')} ms  "
        f"p95 {fmt('p95_ms', '.3f')} ms  recall {fmt('recall_at_10', '.3f')}  filtered p50 "
        f"{fmt('filtered_p50_ms', '.3f')} ms recall {fmt('filtered_recall_at_10', '.3f')}  reopen "
        f"{fmt('reopen_ms', '.0f')} ms  disk {row.get('disk_bytes', 0) / 1e6:,.0f} MB"
    )


# ---------------------------------------------------------------------- T4DX
def _t4dx(root: str, points, queries, users, days, truth, truth_f) -> dict[str, Any]:
    from t4dm.storage import T4DX

    path = os.path.join(root, "t4dx")
    fields = [{"user_id": f"user{u}"} for u in users]
    valid_from = [T0 + timedelta(days=int(d)) for d in days]
    row: dict[str, Any] = {}
    gc.collect()
    start = time.perf_counter()
    db = T4DX.open(path, dim=points.shape[1], durability="batch")
    ids = db.insert_batch(points, fields, valid_from=valid_from)
    db.flush()  # a batch under half a memtable waits there (searched exactly); make it a segment
    db.wait_indexed()
    row["ingest_items_per_s"] = len(points) / (time.perf_counter() - start)
    position = {id: i for i, id in enumerate(ids)}
    row.update(_measure(lambda q: [position[h.id] for h in db.search(q, k=10)], queries, truth))
    window = (T0 + timedelta(days=WINDOW[0]), T0 + timedelta(days=WINDOW[1]))
    filtered = _measure(
        lambda q: [position[h.id] for h in db.search(q, k=10, where={"user_id": "user3"}, valid_from=window)],
        queries,
        truth_f,
    )
    row["filtered_p50_ms"], row["filtered_recall_at_10"] = filtered["p50_ms"], filtered["recall_at_10"]
    db.close()
    start = time.perf_counter()
    db = T4DX.open(path)
    db.search(queries[0], k=10)
    row["reopen_ms"] = (time.perf_counter() - start) * 1e3
    db.close()
    row["disk_bytes"] = _disk_bytes(path)
    return row


# ---------------------------------------------------------------------- peers
def _faiss_hnsw(root: str, points, queries, users, days, truth, truth_f) -> dict[str, Any]:
    import faiss

    row: dict[str, Any] = {}
    unit = _unit(points)
    index = faiss.IndexHNSWFlat(points.shape[1], FAISS_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = FAISS_EF_CONSTRUCTION
    start = time.perf_counter()
    index.add(unit)
    row["ingest_items_per_s"] = len(points) / (time.perf_counter() - start)
    params = faiss.SearchParametersHNSW(efSearch=FAISS_EF_SEARCH)
    row.update(
        _measure(lambda q: index.search(_unit(q)[None], 10, params=params)[1][0].tolist(), queries, truth)
    )

    def filtered(q: np.ndarray) -> list[int]:  # the caller's own metadata arrays give the selector
        allowed = np.flatnonzero((users == 3) & (days >= WINDOW[0]) & (days < WINDOW[1]))
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
        p = faiss.SearchParametersHNSW(efSearch=FAISS_EF_SEARCH, sel=selector)
        return [i for i in index.search(_unit(q)[None], 10, params=p)[1][0].tolist() if i >= 0]

    f = _measure(filtered, queries, truth_f)
    row["filtered_p50_ms"], row["filtered_recall_at_10"] = f["p50_ms"], f["recall_at_10"]
    path = os.path.join(root, "faiss.index")
    faiss.write_index(index, path)
    start = time.perf_counter()
    loaded = faiss.read_index(path)
    loaded.search(_unit(queries[0])[None], 10)
    row["reopen_ms"] = (time.perf_counter() - start) * 1e3
    row["disk_bytes"] = _disk_bytes(path)
    return row


def _hnswlib(root: str, points, queries, users, days, truth, truth_f) -> dict[str, Any]:
    import hnswlib

    row: dict[str, Any] = {}
    index = hnswlib.Index(space="cosine", dim=points.shape[1])
    start = time.perf_counter()
    index.init_index(max_elements=len(points), M=16, ef_construction=200)
    index.add_items(points, np.arange(len(points)))
    row["ingest_items_per_s"] = len(points) / (time.perf_counter() - start)
    index.set_ef(FAISS_EF_SEARCH)
    index.set_num_threads(1)
    row.update(_measure(lambda q: index.knn_query(q, k=10)[0][0].tolist(), queries, truth))
    allowed = (users == 3) & (days >= WINDOW[0]) & (days < WINDOW[1])
    f = _measure(
        lambda q: index.knn_query(q, k=10, filter=lambda i: bool(allowed[i]))[0][0].tolist(), queries, truth_f
    )
    row["filtered_p50_ms"], row["filtered_recall_at_10"] = f["p50_ms"], f["recall_at_10"]
    path = os.path.join(root, "hnswlib.bin")
    index.save_index(path)
    start = time.perf_counter()
    loaded = hnswlib.Index(space="cosine", dim=points.shape[1])
    loaded.load_index(path)
    loaded.knn_query(queries[0], k=10)
    row["reopen_ms"] = (time.perf_counter() - start) * 1e3
    row["disk_bytes"] = _disk_bytes(path)
    return row


def _lancedb(root: str, points, queries, users, days, truth, truth_f) -> dict[str, Any]:
    import lancedb
    import pyarrow as pa

    row: dict[str, Any] = {}
    path = os.path.join(root, "lancedb")
    dim = points.shape[1]
    start = time.perf_counter()
    db = lancedb.connect(path)
    table = db.create_table(
        "items",
        data=pa.table(
            {
                "pos": pa.array(np.arange(len(points))),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(points.reshape(-1)), dim),
                "user": pa.array(users.astype(np.int64)),
                "day": pa.array(days.astype(np.int64)),
            }
        ),
    )
    table.create_index(metric="cosine", index_type="IVF_HNSW_SQ", vector_column_name="vector")
    row["ingest_items_per_s"] = len(points) / (time.perf_counter() - start)

    def search(q: np.ndarray, where: str | None = None) -> list[int]:
        query = table.search(q).metric("cosine").limit(10).select(["pos", "_distance"])
        if where:
            query = query.where(where, prefilter=True)
        return query.to_arrow()["pos"].to_pylist()

    row.update(_measure(search, queries, truth))
    where = f"user = 3 AND day >= {WINDOW[0]} AND day < {WINDOW[1]}"
    f = _measure(lambda q: search(q, where), queries, truth_f)
    row["filtered_p50_ms"], row["filtered_recall_at_10"] = f["p50_ms"], f["recall_at_10"]
    start = time.perf_counter()
    table = lancedb.connect(path).open_table("items")
    search(queries[0])
    row["reopen_ms"] = (time.perf_counter() - start) * 1e3
    row["disk_bytes"] = _disk_bytes(path)
    return row


def _chroma(root: str, points, queries, users, days, truth, truth_f) -> dict[str, Any]:
    import chromadb

    row: dict[str, Any] = {}
    path = os.path.join(root, "chroma")
    client = chromadb.PersistentClient(path=path)
    collection = client.create_collection("items", metadata={"hnsw:space": "cosine"})
    batch = min(5000, client.get_max_batch_size())
    start = time.perf_counter()
    for i in range(0, len(points), batch):
        j = min(len(points), i + batch)
        collection.add(
            ids=[str(x) for x in range(i, j)],
            embeddings=points[i:j],
            metadatas=[{"user": int(users[x]), "day": int(days[x])} for x in range(i, j)],
        )
    row["ingest_items_per_s"] = len(points) / (time.perf_counter() - start)

    def search(q: np.ndarray, where: dict | None = None) -> list[int]:
        result = collection.query(query_embeddings=[q], n_results=10, where=where, include=[])
        return [int(x) for x in result["ids"][0]]

    row.update(_measure(search, queries, truth))
    where = {"$and": [{"user": 3}, {"day": {"$gte": WINDOW[0]}}, {"day": {"$lt": WINDOW[1]}}]}
    f = _measure(lambda q: search(q, where), queries, truth_f)
    row["filtered_p50_ms"], row["filtered_recall_at_10"] = f["p50_ms"], f["recall_at_10"]
    client.clear_system_cache()  # else the next client in this process reuses the open one
    gc.collect()
    start = time.perf_counter()
    reopened = chromadb.PersistentClient(path=path).get_collection("items")
    reopened.query(query_embeddings=[queries[0]], n_results=10, include=[])
    row["reopen_ms"] = (time.perf_counter() - start) * 1e3
    row["disk_bytes"] = _disk_bytes(path)
    return row


PEERS = {"faiss": _faiss_hnsw, "hnswlib": _hnswlib, "lancedb": _lancedb, "chroma": _chroma}


def run_search_bench(
    n: int = 100_000,
    dims: tuple[int, ...] = (384, 1024),
    peers: list[str] | None = None,
    json_path: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run the search benchmark for each dimension; returns (and optionally writes) the results."""
    peers = list(PEERS) if peers is None else list(peers)
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"peers={sorted(unknown)}: known peers are {', '.join(PEERS)}")
    results: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "n": n,
        "filter": f"one user of {USERS} and days [{WINDOW[0]}, {WINDOW[1]}) of {DAYS}",
    }
    for dim in dims:
        points, queries, users, days = _data(n, dim)
        allowed = (users == 3) & (days >= WINDOW[0]) & (days < WINDOW[1])
        _say(f"t4dm bench search: {n:,} clustered items x {dim} dims; the filter keeps {allowed.mean():.2%}")
        truth, truth_f = _truth(points, queries), _truth(points, queries, allowed)
        per_dim: dict[str, Any] = {}
        for name, run in [("t4dx", _t4dx), *((p, PEERS[p]) for p in peers)]:
            root = tempfile.mkdtemp(prefix=f"t4dm-search-{name}-", dir=workdir)
            try:
                per_dim[name] = run(root, points, queries, users, days, truth, truth_f)
                _report(name, per_dim[name])
            except ImportError as exc:
                _say(f"{name}: not installed ({exc.name}), skipped")
            finally:
                shutil.rmtree(root, ignore_errors=True)
        results[f"dim{dim}"] = per_dim
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        _say(f"results written to {json_path}")
    return results
