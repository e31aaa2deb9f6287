"""``t4dm demo --storage``: the T4DX storage engine alone, end to end on synthetic vectors.

It writes a stream of episodes for two users, corrects and deletes some, asks bitemporal questions
("what did we know at T about T′"), consolidates with a compaction policy, reopens the store from disk
and prints what it saw. (The main job, `t4dm demo`, is `t4dm.demo`: the memory SDK.)
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timedelta

import numpy as np

from t4dm.storage import T4DX, UTC, Item, MergedRows


def _replay_policy(rows: MergedRows) -> None:
    """A stand-in for NREM consolidation: every live episode is replayed once (κ += 0.15)."""
    live_episode = rows.is_current & (np.asarray(rows.kinds) == "episode")
    rows.kappa[live_episode] = np.minimum(1.0, rows.kappa[live_episode] + 0.15)


def run_storage_demo(
    path: str | None = None, n: int = 20_000, dim: int = 384, seed: int = 0
) -> dict[str, float]:
    if n < 2:
        raise ValueError(f"n={n}: the demo needs at least 2 episodes")
    rng = np.random.default_rng(seed)
    own_dir = None
    if path is None:
        own_dir = tempfile.TemporaryDirectory(prefix="t4dm-demo-")
        path = own_dir.name + "/store"
    figures: dict[str, float] = {}
    try:
        print(f"T4DX demo: {n} episodes of {dim} dims in {path}")
        with T4DX.open(path, dim=dim, durability="batch") as db:
            vectors = rng.standard_normal((n, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            start = datetime(2024, 1, 1, tzinfo=UTC)
            fields = [
                {"text": f"episode {i}", "user_id": ("alice", "bob")[i % 2], "turn": i} for i in range(n)
            ]
            valid_from = [start + timedelta(hours=i) for i in range(n)]
            t0 = time.perf_counter()
            ids = db.insert_batch(vectors, fields, valid_from=valid_from)
            figures["insert_items_per_s"] = n / (time.perf_counter() - t0)
            print(f"  insert_batch: {figures['insert_items_per_s']:,.0f} items/s (durability=batch)")

            # A fact, then a correction: the store keeps both versions.
            [fact] = db.insert(
                Item(vector=vectors[0], kind="entity", kappa=0.4, fields={"text": "Alice lives in Lyon", "user_id": "alice"},
                     valid_from=datetime(2023, 1, 1, tzinfo=UTC))
            )  # fmt: skip
            before_correction = datetime.now(UTC)
            time.sleep(0.002)
            db.update_fields(
                fact, {"text": "Alice lives in Paris"}, valid_from=datetime(2023, 5, 8, tzinfo=UTC)
            )
            print(f"  now:                          {db.get(fact).fields['text']}")
            print(f"  as known before the update:   {db.get(fact, as_of=before_correction).fields['text']}")
            print(f"  versions in history:          {len(db.history(fact))}")

            deleted = max(1, n // 200)
            db.delete(ids[:deleted])
            t0 = time.perf_counter()
            sample = rng.choice(ids[deleted:], size=min(2000, n - deleted), replace=False).tolist()
            for i in sample:
                db.get(i)
            figures["get_us"] = (time.perf_counter() - t0) / len(sample) * 1e6
            print(f"  get (memtable):               {figures['get_us']:.1f} µs mean")

            db.flush()
            alice = db.count(where={"user_id": "alice"})
            print(f"  alice's live items:           {alice}")
            stats = db.compact(_replay_policy)
            figures["compaction_mb_per_s"] = stats.mb_per_s
            print(
                f"  compaction: {stats.rows_in} rows -> {stats.rows_out} in {stats.seconds * 1e3:.0f} ms "
                f"({stats.mb_per_s:,.0f} MB/s), κ of live episodes now 0.15"
            )
            replayed = db.count(kappa=(0.1, 0.2), kind="episode")
            print(f"  episodes with κ in [0.1, 0.2]: {replayed}")
            db.wait_indexed()
            query = vectors[n // 2 + 1]  # one of bob's episodes: it finds itself first
            t0 = time.perf_counter()
            hits = db.search(query, k=3, where={"user_id": "bob"})
            figures["search_ms"] = (time.perf_counter() - t0) * 1e3
            best = ", ".join(f"{h.item.fields['text']!r} ({h.score:.3f})" for h in hits)
            print(f"  search, bob only: {best} in {figures['search_ms']:.2f} ms")
            in_january = db.count(valid_at=datetime(2024, 1, 15, tzinfo=UTC))
            print(f"  true on 2024-01-15 (valid time): {in_january}")

        with T4DX.open(path) as db:
            print(
                f"  reopened: {len(db)} live items, {db.stats()['segments']} segment(s); fact = {db.get(fact).fields['text']!r}"
            )
            figures["live_items"] = float(len(db))
    finally:
        if own_dir is not None:
            own_dir.cleanup()
    return figures
