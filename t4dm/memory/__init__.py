"""The memory SDK: :class:`Memory` over an embedded T4DX store (``from t4dm import Memory``), and
:class:`AsyncMemory`, the same calls as coroutines."""

from __future__ import annotations

from .aio import AsyncMemory
from .consolidation import ConsolidationConfig, ConsolidationReport
from .embedder import (
    CallableEmbedder,
    Embedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    default_embedder,
    load_embedder,
)
from .lexical import LexicalIndex, tokenize
from .memory import SCOPES, AddResult, Memory, MemoryHit, MemoryItem, content_hash, default_path

__all__ = [
    "SCOPES",
    "AddResult",
    "AsyncMemory",
    "CallableEmbedder",
    "ConsolidationConfig",
    "ConsolidationReport",
    "Embedder",
    "LexicalIndex",
    "Memory",
    "MemoryHit",
    "MemoryItem",
    "OnnxEmbedder",
    "SentenceTransformerEmbedder",
    "content_hash",
    "default_embedder",
    "default_path",
    "load_embedder",
    "tokenize",
]
