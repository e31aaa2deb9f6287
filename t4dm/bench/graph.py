"""``t4dm bench graph``: TRAVERSE beside ``scipy.sparse`` on the same random graph, in one process.

A graph of ``nodes`` ids and ``edges`` random directed edges (one relation) is bulk-loaded into a T4DX
store and compacted; a 2-hop expansion from ``seeds`` random seeds is then timed three ways:

* T4DX ``traverse``: ids in, the lazy ``{id: hops}`` mapping out (what a user calls), and the same with
  every reached node named (iterated into a dict);
* T4DX's Numba expansion alone (keys in, keys out: the walk without turning keys back into ids);
* scipy: the same expansion as sparse products on a CSR matrix, as row slices of it, and as a loop over
  ``indptr`` (the fastest of the three is the peer's figure).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .timing import median_ms

__all__ = ["run_graph_bench"]


def _say(text: str) -> None:
    print(text, flush=True)


def run_graph_bench(
    nodes: int = 1_000_000,
    edges: int = 10_000_000,
    seeds: int = 1000,
    depth: int = 2,
    json_path: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    import scipy.sparse as sp

    from t4dm.storage import T4DX
    from t4dm.storage.graph import breadth_first, graph_plan
    from t4dm.storage.keys import keys_of

    rng = np.random.default_rng(0)
    src = rng.integers(0, nodes, edges)
    dst = rng.integers(0, nodes, edges)
    seed_nodes = rng.choice(nodes, seeds, replace=False)
    names = [f"n{i}" for i in range(nodes)]
    results: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "nodes": nodes,
        "edges": edges,
        "seeds": seeds,
        "depth": depth,
    }
    _say(f"t4dm bench graph: {nodes:,} nodes, {edges:,} edges, {depth}-hop expansion from {seeds:,} seeds")

    # scipy: CSR matrix, expansion by sparse products and by a loop over indptr
    matrix = sp.csr_matrix((np.ones(edges, dtype=np.float32), (src, dst)), shape=(nodes, nodes))

    def scipy_product() -> np.ndarray:
        reached = np.zeros(nodes, dtype=bool)
        reached[seed_nodes] = True
        frontier = reached.copy()
        for _ in range(depth):
            nxt = (matrix.T @ frontier.astype(np.float32)) > 0
            frontier = nxt & ~reached
            reached |= nxt
        return np.flatnonzero(reached)

    def scipy_loop() -> np.ndarray:
        reached = np.zeros(nodes, dtype=bool)
        reached[seed_nodes] = True
        frontier = seed_nodes
        indptr, indices = matrix.indptr, matrix.indices
        for _ in range(depth):
            nxt = (
                np.concatenate([indices[indptr[v] : indptr[v + 1]] for v in frontier])
                if len(frontier)
                else frontier
            )
            nxt = np.unique(nxt)
            frontier = nxt[~reached[nxt]]
            reached[frontier] = True
        return np.flatnonzero(reached)

    def scipy_rows() -> np.ndarray:
        reached = np.zeros(nodes, dtype=bool)
        reached[seed_nodes] = True
        frontier = seed_nodes
        for _ in range(depth):
            nxt = np.unique(matrix[frontier].indices)  # the frontier's rows, sliced out of the CSR
            frontier = nxt[~reached[nxt]]
            reached[frontier] = True
        return np.flatnonzero(reached)

    expected = scipy_product()
    if not np.array_equal(scipy_rows(), expected) or not np.array_equal(scipy_loop(), expected):
        raise AssertionError("the scipy forms reached different nodes")
    results["reached"] = int(expected.size)
    results["scipy_product_ms"] = median_ms(scipy_product)
    results["scipy_rows_ms"] = median_ms(scipy_rows)
    results["scipy_loop_ms"] = median_ms(scipy_loop)
    results["scipy_best_ms"] = min(results[f"scipy_{k}_ms"] for k in ("product", "rows", "loop"))
    _say(f"scipy sparse product: {results['scipy_product_ms']:.1f} ms; row slices: {results['scipy_rows_ms']:.1f} ms; "
         f"loop over indptr: {results['scipy_loop_ms']:.1f} ms ({expected.size:,} nodes reached)")  # fmt: skip

    root = tempfile.mkdtemp(prefix="t4dm-graph-", dir=workdir)
    try:
        start = time.perf_counter()
        with T4DX.open(os.path.join(root, "g"), dim=4, durability="none", memtable_bytes=256 << 20) as db:
            step = 1_000_000
            for i in range(0, edges, step):
                db.add_edges_batch(
                    [names[j] for j in src[i : i + step]],
                    [names[j] for j in dst[i : i + step]],
                    check_endpoints=False,
                )
            db.compact()
            results["load_s"] = time.perf_counter() - start
            _say(f"T4DX bulk load + compaction: {results['load_s']:.1f} s")
            seed_ids = [names[j] for j in seed_nodes]
            got = db.traverse(seed_ids, depth)
            if len(got) != expected.size or any(names[j] not in got for j in expected[:1000]):
                raise AssertionError("T4DX and scipy reached different nodes")
            results["t4dx_traverse_ms"] = median_ms(lambda: db.traverse(seed_ids, depth))
            # ... and with every reached node named (the result iterated into a dict)
            results["t4dx_traverse_named_ms"] = median_ms(lambda: db.traverse(seed_ids, depth).to_dict())
            snap = db._snap
            plan = graph_plan(
                [(s, s.n) for s in snap.segments], snap, "out", None, -np.inf, None, None, False
            )
            hi, lo = keys_of(seed_ids)
            results["t4dx_walk_ms"] = median_ms(
                lambda: breadth_first(plan, seed_ids, depth, keys=(hi, lo), name=False)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["t4dx_vs_scipy_product"] = results["scipy_product_ms"] / results["t4dx_traverse_ms"]
    results["t4dx_vs_scipy_best"] = results["scipy_best_ms"] / results["t4dx_traverse_ms"]
    _say(f"T4DX traverse (ids in, a lazy {{id: hops}} mapping out): {results['t4dx_traverse_ms']:.1f} ms "
         f"({results['t4dx_vs_scipy_product']:.2f}x scipy's product, {results['t4dx_vs_scipy_best']:.2f}x "
         f"scipy's fastest form); every node named: "
         f"{results['t4dx_traverse_named_ms']:.1f} ms; the Numba walk alone: {results['t4dx_walk_ms']:.1f} ms")  # fmt: skip
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results
