"""A deterministic bag-of-words embedder (fast, no model): texts with the same words embed identically,
texts with no word in common are nearly orthogonal."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

DIM = 256


def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def bag_of_words(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[i] += _word_vector(word)
        if not out[i].any():
            out[i] = _word_vector("<empty>")
    return out


@pytest.fixture
def memory(tmp_path):
    from t4dm import Memory

    with Memory(tmp_path / "memories", embedder=bag_of_words) as m:
        yield m
