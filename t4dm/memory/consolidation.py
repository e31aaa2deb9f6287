"""Consolidation as sleep phases, run as one T4DX compaction policy (atomic with the merge).

* **NREM** (replay): memories returned by searches since the last consolidation, and strong new ones
  (τ ≥ ``replay_tau``, κ still 0), move up by ``replay_step`` per replay (at most ``max_replays``);
  memories retrieved together are linked by ``co_retrieved`` edges whose weight grows with every
  co-retrieval (Hebbian, as UPDATE_EDGE_WEIGHT overlays).
* **REM** (abstraction): the low-κ episodes of each user are clustered (spherical k-means, faiss); a
  cluster whose members lie close to its centre becomes a ``prototype`` item (κ ``prototype_kappa``, the
  centre of those members as its vector, the texts of its three most central: :func:`prototype_of`) with
  provenance to every member; the members move to the transitional band (``member_kappa``), so they are
  not clustered again.
* **PRUNE**: memories still in the lowest band (κ ≤ ``prune_max_kappa``), weak when written
  (τ ≤ ``prune_max_tau``), seen once, never retrieved and older than ``prune_after`` are forgotten (every
  version dropped); the compaction itself drops tombstones and expired history.

Idempotent: a second run with no searches in between changes nothing (replays are counted per run, REM
skips what it has consolidated, PRUNE's candidates are gone). Crash-safe: all of it is one compaction;
only the ``co_retrieved`` edges are written after it, in their own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from t4dm.errors import InvalidInput
from t4dm.storage import Item, MergedRows
from t4dm.storage.rows import TAG_FIELDS

from .lexical import add_to_lexical

if TYPE_CHECKING:
    from .memory import Memory


__all__ = ["PHASES", "ConsolidationConfig", "ConsolidationReport", "band_of", "consolidate", "prototype_of"]

PHASES = ("nrem", "rem", "prune")
BANDS = ("episodic", "transitional", "semantic")  # κ < 0.4, 0.4 ≤ κ < 0.85, κ ≥ 0.85
CO_RETRIEVED = "co_retrieved"
REM_RESTARTS = 8  # k-means initialisations per user; the run with the lowest objective is kept


def band_of(kappa: float) -> str:
    return BANDS[0] if kappa < 0.4 else BANDS[1] if kappa < 0.85 else BANDS[2]


@dataclass(frozen=True, slots=True)
class ConsolidationConfig:
    replay_step: float = 0.15
    max_replays: int = 3
    replay_tau: float = 0.95
    co_retrieval_top: int = 3  # the top hits of one search count as retrieved together
    hebbian_step: float = 0.1
    rem_max_kappa: float = 0.4
    rem_cluster_size: int = 8
    rem_min_members: int = 3
    rem_min_similarity: float = 0.6
    prototype_kappa: float = 0.85
    member_kappa: float = 0.4
    prune_max_kappa: float = 0.1
    prune_max_tau: float = 0.6
    prune_after: timedelta = timedelta(days=180)

    def __post_init__(self) -> None:
        for name in ("replay_step", "hebbian_step", "rem_max_kappa", "rem_min_similarity", "prototype_kappa",
                     "member_kappa", "prune_max_kappa", "prune_max_tau", "replay_tau"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise InvalidInput(name, value, "expected a number in [0, 1]")
        for name in ("max_replays", "co_retrieval_top", "rem_cluster_size", "rem_min_members"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(name, value, "expected an integer >= 1")
        if not isinstance(self.prune_after, timedelta) or self.prune_after < timedelta(0):
            raise InvalidInput("prune_after", self.prune_after, "expected a timedelta >= 0")


@dataclass(slots=True)
class ConsolidationReport:
    """What one consolidation did: κ bands before and after (live memories), per phase counts, and the
    moves between bands (``"episodic->transitional": n``)."""

    phases: tuple[str, ...]
    bands_before: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BANDS, 0))
    bands_after: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BANDS, 0))
    moves: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    co_retrieval_edges: int = 0
    prototypes: int = 0
    members: int = 0
    pruned: int = 0
    prototype_ids: list[str] = field(default_factory=list)
    pruned_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        moved = ", ".join(f"{k} {v}" for k, v in sorted(self.moves.items())) or "none"
        return (
            f"replayed {self.replayed}, prototypes {self.prototypes} (from {self.members} episodes), "
            f"pruned {self.pruned}, co-retrieval edges {self.co_retrieval_edges}; κ bands "
            f"{self.bands_before} -> {self.bands_after}; moves: {moved}"
        )


def _check_phases(phases: Iterable[str]) -> tuple[str, ...]:
    if isinstance(phases, str):
        phases = (phases,)
    out = tuple(dict.fromkeys(phases))
    unknown = [p for p in out if p not in PHASES]
    if unknown or not out:
        raise InvalidInput("phases", list(phases), f"expected some of {PHASES}")
    return out


class _Policy:
    """The compaction policy: reads the merged rows, edits κ and ``keep``, adds prototypes."""

    def __init__(
        self,
        config: ConsolidationConfig,
        phases: tuple[str, ...],
        retrievals: Mapping[str, int],
        now: datetime,
        report: ConsolidationReport,
        progress: Any,
    ) -> None:
        self.config, self.phases, self.retrievals, self.now = config, phases, retrievals, now
        self.report, self.progress = report, progress

    def __call__(self, rows: MergedRows) -> None:
        c, report = self.config, self.report
        live = np.flatnonzero(rows.is_current & rows.is_item)
        ids = rows.ids
        kinds = rows.kinds
        before = {i: float(rows.kappa[i]) for i in live.tolist()}
        for kappa in before.values():
            report.bands_before[band_of(kappa)] += 1
        fields = {i: rows.fields(i) for i in live.tolist()}
        if "nrem" in self.phases:
            for i in live.tolist():
                count = self.retrievals.get(ids[i], 0)
                strong = count == 0 and rows.kappa[i] == 0.0 and (fields[i].get("tau") or 0.0) >= c.replay_tau
                replays = min(count, c.max_replays) if count else (1 if strong else 0)
                if replays:
                    rows.kappa[i] = min(1.0, rows.kappa[i] + c.replay_step * replays)
                    report.replayed += 1
            self.progress.update(1)
        if "rem" in self.phases:
            self._rem(rows, live, kinds, fields)
            self.progress.update(1)
        if "prune" in self.phases:
            cutoff = int((self.now - c.prune_after - _EPOCH) / timedelta(microseconds=1))
            doomed = set()
            for i in live.tolist():
                f = fields[i]
                if (
                    rows.kappa[i] <= c.prune_max_kappa
                    and (f.get("tau") if f.get("tau") is not None else 1.0) <= c.prune_max_tau
                    and int(f.get("seen", 1)) <= 1
                    and self.retrievals.get(ids[i], 0) == 0
                    and rows.valid_from[i] < cutoff
                    and rows.recorded_at[i] < cutoff
                ):
                    doomed.add(ids[i])
            if doomed:
                for j in range(rows.n):
                    if rows.is_item[j] and ids[j] in doomed:
                        rows.keep[j] = False
            report.pruned = len(doomed)
            report.pruned_ids = sorted(doomed)
            self.progress.update(1)
        for i, kappa in before.items():
            if ids[i] in report.pruned_ids:
                continue
            after = float(rows.kappa[i])
            report.bands_after[band_of(after)] += 1
            if band_of(after) != band_of(kappa):
                key = f"{band_of(kappa)}->{band_of(after)}"
                report.moves[key] = report.moves.get(key, 0) + 1
        report.bands_after[band_of(c.prototype_kappa)] += report.prototypes

    def _rem(self, rows: MergedRows, live: np.ndarray, kinds: list[str], fields: dict[int, dict]) -> None:
        c, report = self.config, self.report
        by_user: dict[Any, list[int]] = {}
        for i in live.tolist():
            if kinds[i] == "episode" and rows.kappa[i] < c.rem_max_kappa:
                by_user.setdefault(fields[i].get("user_id"), []).append(i)
        for _, members in sorted(by_user.items(), key=lambda pair: str(pair[0])):
            if len(members) < max(c.rem_min_members, 2):
                continue
            vectors = rows.vectors(members)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            k = max(1, len(members) // c.rem_cluster_size)
            # the best of REM_RESTARTS initialisations: one k-means run from a poor start can merge two
            # topics (the members' order, hence the initial centroids, follows their random ids)
            kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, nredo=REM_RESTARTS, seed=1234, spherical=True,
                                  verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 20)  # fmt: skip
            kmeans.train(vectors)
            _, assign = kmeans.index.search(vectors, 1)
            for cluster in range(k):
                mine = np.flatnonzero(assign[:, 0] == cluster)
                if mine.size < c.rem_min_members:
                    continue
                centre = vectors[mine].mean(axis=0)
                centre /= max(float(np.linalg.norm(centre)), 1e-12)
                similarity = vectors[mine] @ centre
                close = mine[similarity >= c.rem_min_similarity]
                if close.size < c.rem_min_members:
                    continue
                rows_of = [members[int(j)] for j in close]
                prototype, order = prototype_of(
                    vectors[close],
                    [fields[r] for r in rows_of],
                    [_EPOCH + timedelta(microseconds=int(rows.valid_from[r])) for r in rows_of],
                    kappa=c.prototype_kappa,
                    consolidated_at=self.now.isoformat(),
                )
                rows_of = [rows_of[j] for j in order]
                rows.add(prototype, derived_from=[rows.ids[r] for r in rows_of])
                for r in rows_of:
                    rows.kappa[r] = max(rows.kappa[r], c.member_kappa)
                report.prototypes += 1
                report.members += len(rows_of)
                report.prototype_ids.append(prototype.id or "")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def prototype_of(
    vectors: np.ndarray,
    fields: list[Mapping[str, Any]],
    valid_from: list[datetime],
    *,
    kappa: float,
    consolidated_at: str,
    id: str | None = None,
) -> tuple[Item, np.ndarray]:
    """The prototype of some members (their unit vectors, fields and valid times), and the members' order,
    most central first: the normalised centre of the members as its vector, the texts of the three most
    central, the scope the members share, the earliest valid time. It holds nothing but what the members
    hold, so that erasing one of them can rebuild it from the others (``Memory.erase``)."""
    centre = vectors.mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    order = np.argsort(-(vectors @ centre), kind="stable")
    ranked = [fields[int(j)] for j in order]
    scope = {
        name: ranked[0][name]
        for name in TAG_FIELDS  # the scope: the store's indexed tenancy columns
        if name in ranked[0] and all(f.get(name) == ranked[0][name] for f in ranked)
    }
    prototype = Item(
        vector=centre.astype(np.float32),
        id=id or str(uuid.uuid4()),
        kappa=kappa,
        kind="prototype",
        fields={
            **scope,
            "text": " | ".join(str(f.get("text", "")) for f in ranked[:3]),
            "members": len(ranked),
            "tau": None,
            "seen": 1,
            "consolidated_at": consolidated_at,
        },
        valid_from=min(valid_from),
    )
    return prototype, order


def consolidate(
    memory: Memory,
    phases: Iterable[str] = PHASES,
    *,
    config: ConsolidationConfig | None = None,
    now: datetime | None = None,
    progress: bool = True,
) -> ConsolidationReport:
    """Run the sleep phases on ``memory``'s store as one full compaction; see the module's doc."""
    import time

    from tqdm.auto import tqdm

    chosen = _check_phases(phases)
    config = config or ConsolidationConfig()
    if not isinstance(config, ConsolidationConfig):
        raise InvalidInput("config", type(config).__name__, "expected a ConsolidationConfig")
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        from t4dm.errors import InvalidTime

        raise InvalidTime("now", now, "naive datetime: give a timezone")
    start = time.perf_counter()
    report = ConsolidationReport(chosen)
    with memory._lock:
        retrievals = dict(memory.retrievals)
        co = list(memory.co_retrievals)
        with tqdm(total=len(chosen), desc="consolidate", disable=not progress, leave=False) as bar:
            memory.db.compact(_Policy(config, chosen, retrievals, now, report, bar))
        if "nrem" in chosen:
            # the replayed searches are spent (their κ now protects them from PRUNE): a second run does
            # not replay them again
            for id, count in retrievals.items():
                left = memory.retrievals.get(id, 0) - count
                if left > 0:
                    memory.retrievals[id] = left
                else:
                    memory.retrievals.pop(id, None)
            del memory.co_retrievals[: len(co)]
            if co:
                report.co_retrieval_edges = _potentiate(memory, co, config)
        lexical = memory.lexical
        for id in report.pruned_ids:
            lexical.remove(id)
        for id in report.prototype_ids:
            item = memory.db.get(id)
            if item is not None:
                add_to_lexical(lexical, id, item.fields)
    report.seconds = time.perf_counter() - start
    return report


def _potentiate(memory: Memory, co: list[tuple[str, ...]], config: ConsolidationConfig) -> int:
    """Hebbian: each pair retrieved together gains ``hebbian_step`` on its ``co_retrieved`` edge (both
    directions), created at that weight when missing. Pairs whose items are gone are skipped."""
    pairs: dict[tuple[str, str], int] = {}
    for group in co:
        top = list(group[: config.co_retrieval_top])
        for a in top:
            for b in top:
                if a != b:
                    pairs[(a, b)] = pairs.get((a, b), 0) + 1
    db = memory.db
    alive = {id for pair in pairs for id in pair if db.get(id) is not None}
    pairs = {p: n for p, n in pairs.items() if p[0] in alive and p[1] in alive}
    if not pairs:
        return 0
    existing = {(e.src, e.dst) for e in db.edges(sorted(alive), rel=CO_RETRIEVED)}
    new = [p for p in pairs if p not in existing]
    if new:
        from t4dm.storage import Edge

        db.add_edges(
            [Edge(a, b, rel=CO_RETRIEVED, weight=config.hebbian_step * pairs[(a, b)]) for a, b in new]
        )
    grow = [
        (a, b, CO_RETRIEVED, config.hebbian_step * n) for (a, b), n in pairs.items() if (a, b) in existing
    ]
    if grow:
        db.update_edge_weights(grow)
    return len(pairs)
