"""airspeed velocity suite for the memory SDK's search (``make asv``): the Python around the store, with a
stub embedder so the figure is ours, not the embedding model's (all-MiniLM-L6-v2 adds ~18 ms per query on
the 2-core VM). Seeded synthetic conversations; the JIT warmed in ``setup``."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import datetime, timedelta, timezone

import numpy as np

from t4dm.memory import Memory

WORDS = [
    "trip",
    "paris",
    "dinner",
    "sister",
    "garden",
    "book",
    "guitar",
    "concert",
    "job",
    "interview",
    "dog",
    "park",
    "rain",
    "coffee",
    "movie",
    "birthday",
    "camping",
    "beach",
    "painting",
    "school",
    "marathon",
    "recipe",
    "piano",
    "museum",
    "train",
    "weekend",
    "family",
    "friend",
]


def _stub_embedder(texts: list[str]) -> np.ndarray:
    """A fixed pseudo-random unit vector per text (seeded by its hash): the store and fusion do real work."""
    out = np.empty((len(texts), 384), np.float32)
    for i, text in enumerate(texts):
        rng = np.random.default_rng(int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16))
        out[i] = rng.standard_normal(384)
    return out


def _sessions(n_turns: int, seed: int = 0) -> list[tuple[str, str, list[dict]]]:
    """(user, run, messages) per session of 20 turns, over 5 users."""
    rng = np.random.default_rng(seed)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    out = []
    for s in range(n_turns // 20):
        messages = [
            {"speaker": "A" if t % 2 else "B", "content": " ".join(rng.choice(WORDS, 12)),
             "valid_at": start + timedelta(days=s, minutes=t)}
            for t in range(20)
        ]  # fmt: skip
        out.append((f"user{s % 5}", f"user{s % 5}/session{s}", messages))
    return out


class Search:
    params = [3_000]
    param_names = ["turns"]
    timeout = 300

    def setup(self, turns: int) -> None:
        self.root = tempfile.mkdtemp()
        self.memory = Memory(self.root + "/m", embedder=_stub_embedder, durability="none")
        for user, run, messages in _sessions(turns):
            self.memory.add(messages, user_id=user, run_id=run)
        rng = np.random.default_rng(1)
        self.queries = [" ".join(rng.choice(WORDS, 6)) for _ in range(50)]
        self.memory.search(self.queries[0], user_id="user0")  # JIT and caches

    def teardown(self, turns: int) -> None:
        self.memory.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def time_search_50_queries(self, turns: int) -> None:
        for i, query in enumerate(self.queries):
            self.memory.search(query, user_id=f"user{i % 5}", k=10)

    def time_search_50_queries_no_expansion(self, turns: int) -> None:
        for i, query in enumerate(self.queries):
            self.memory.search(query, user_id=f"user{i % 5}", k=10, expand=False)
