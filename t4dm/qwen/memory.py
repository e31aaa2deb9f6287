"""The unified model's memory: a T4DX store read by the model's layer state and written through τ(t).

Every access is a T4DX primitive: reads are ``store.search`` (SEARCH), writes ``store.insert`` (INSERT);
nothing reaches around the store's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from t4dm.errors import DimensionMismatch, InvalidInput
from t4dm.gate import GateDecision, WriteGate

__all__ = ["DEFAULT_MODEL_GATE", "MemoryWrite", "ModelMemory"]

#: The unified model's default gate. Its surprise ε is a mean token loss in nats (a trained 3B model sits
#: around 2), so the bias makes a known episode (novelty ≈ 0) with an ordinary loss and no reward fail:
#: τ = σ(ε + 4·novelty + 2·reward − 3) > 0.5 needs ε > 3 nats, some novelty or a reward.
DEFAULT_MODEL_GATE = WriteGate(lambda_surprise=1.0, lambda_novelty=4.0, lambda_reward=2.0, bias=-3.0)


@dataclass(frozen=True)
class MemoryWrite:
    """One gated write: the gate's ``decision``, the stored ``id`` (None when the gate refused) and the
    episode ``vector`` ``[dim]`` float32."""

    decision: GateDecision
    id: str | None
    vector: np.ndarray = field(repr=False)


class ModelMemory:
    """A T4DX store of ``dim``-dimensional episode vectors that the unified model reads and writes.

    Args:
        store: an open :class:`~t4dm.storage.T4DX` (its ``dim`` must equal ``dim``).
        dim: the model's memory dimension (``UnifiedModel(memory_dim=...)``).
        k: memories retrieved per sequence.
        gate: the τ(t) write gate (default :data:`DEFAULT_MODEL_GATE`).
        kind: the item kind written and searched (``"episode"``).
        where: a scope, field name → value (e.g. ``{"user_id": "alice"}``, as the memory SDK stores it):
            reads and the novelty search see only items whose fields match, and written episodes carry it.
        kappa: a κ policy on reads, ``(lo, hi)`` inclusive: only memories consolidated that far are read
            (e.g. ``(0.85, 1.0)``: semantic knowledge only; ``(0.0, 0.4)``: fresh episodes only). The novelty
            a write is gated on still sees every κ (a new episode is not novel for repeating an old one).
    """

    def __init__(
        self,
        store: Any,
        dim: int,
        *,
        k: int = 4,
        gate: WriteGate | None = None,
        kind: str = "episode",
        where: Mapping[str, Any] | None = None,
        kappa: tuple[float, float] | None = None,
    ) -> None:
        store_dim = getattr(store, "dim", None)
        if store_dim is None or not callable(getattr(store, "search", None)):
            raise InvalidInput("store", type(store).__name__, "expected an open T4DX store")
        if store_dim != dim:
            raise DimensionMismatch("store", f"<store of dimension {store_dim}>", dim)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput("k", k, "must be an int >= 1")
        if gate is not None and not isinstance(gate, WriteGate):
            raise InvalidInput("gate", type(gate).__name__, "expected a t4dm.gate.WriteGate")
        if not isinstance(kind, str) or not kind:
            raise InvalidInput("kind", kind, "must be a non-empty string")
        if where is not None and (
            not isinstance(where, Mapping) or not where or not all(isinstance(f, str) and f for f in where)
        ):
            raise InvalidInput(
                "where", where, "must be a non-empty mapping of field names to values, or None"
            )
        if kappa is not None:
            ok = (
                isinstance(kappa, (tuple, list))
                and len(kappa) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in kappa)
                and 0.0 <= kappa[0] <= kappa[1] <= 1.0
            )
            if not ok:
                raise InvalidInput("kappa", kappa, "must be None or (lo, hi) with 0 <= lo <= hi <= 1")
            kappa = (float(kappa[0]), float(kappa[1]))
        self.kappa = kappa
        self.where = None if where is None else dict(where)
        self.store = store
        self.dim = dim
        self.k = k
        self.gate = DEFAULT_MODEL_GATE if gate is None else gate
        self.kind = kind

    def _check_rows(self, vectors: np.ndarray, name: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(name, f"<shape {vectors.shape}>", self.dim)
        return vectors

    def _search(self, query: np.ndarray, k: int, kappa: tuple[float, float] | None = None) -> list[Any]:
        filters: dict[str, Any] = {"kind": self.kind}
        if self.where is not None:
            filters["where"] = self.where
        if kappa is not None:
            filters["kappa"] = kappa
        return self.store.search(query, k, **filters)

    def read(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SEARCH the store once per query row ``[B, dim]``; returns the mean of each row's ``k`` nearest
        memories ``[B, dim]`` float32 (zeros where the store had none) and ``found`` ``[B]`` bool."""
        queries = self._check_rows(queries, "queries")
        retrieved = np.zeros_like(queries)
        found = np.zeros(len(queries), dtype=bool)
        for b, query in enumerate(queries):
            hits = self._search(query, self.k, self.kappa)
            if hits:
                retrieved[b] = np.mean([np.asarray(h.item.vector, dtype=np.float32) for h in hits], axis=0)
                found[b] = True
        return retrieved, found

    def novelty(self, vector: np.ndarray) -> float:
        """Cosine distance from ``vector`` to the nearest stored memory of this kind, in [0, 2]; 1 when the
        store holds none."""
        vector = self._check_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), "vector")[0]
        hits = self._search(vector, 1)
        return 1.0 if not hits else min(2.0, max(0.0, 1.0 - float(hits[0].score)))

    def write(
        self,
        vector: np.ndarray,
        *,
        surprise: float,
        reward: float = 0.0,
        fields: Mapping[str, Any] | None = None,
    ) -> MemoryWrite:
        """Gate one episode ``vector`` ``[dim]`` with τ = σ(λ_ε·surprise + λ_Δ·novelty + λ_r·reward + b)
        (novelty from :meth:`novelty`) and INSERT it when the gate says store. ``fields`` are kept with it,
        beside the gate's inputs and τ."""
        vector = self._check_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), "vector")[0]
        decision = self.gate.decide(surprise=surprise, novelty=self.novelty(vector), reward=reward)
        if not decision.store:
            return MemoryWrite(decision, None, vector)
        from t4dm.storage import Item

        record = {
            "source": "t4dm.qwen",
            "tau": decision.tau,
            "surprise": decision.surprise,
            "novelty": decision.novelty,
            "reward": decision.reward,
        }
        record.update(self.where or {})
        record.update(fields or {})
        [item_id] = self.store.insert(Item(vector=vector, kappa=0.0, kind=self.kind, fields=record))
        return MemoryWrite(decision, item_id, vector)
