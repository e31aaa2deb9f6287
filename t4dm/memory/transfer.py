"""Export a memory to JSON Lines and import it into another, re-embedded: backups a person can read, moves
between machines and versions, and a change of embedder (e.g. to the unified model's own keys,
:class:`t4dm.qwen.ModelEmbedder`), which a store of fixed dimension cannot do in place.

One JSON object per line. A header ``{"type": "t4dm-memory", "format": 1, "embedder": ..., "dim": ...}``,
then every live memory ``{"type": "memory", "id", "kind", "kappa", "valid_from", "valid_to", "recorded_at",
"fields"}`` and every edge between them ``{"type": "edge", "src", "dst", "rel", "weight", "valid_from",
"valid_to"}``. Times are ISO 8601; a datetime or bytes inside ``fields`` is written as ``{"$datetime": iso}``
/ ``{"$bytes": base64}`` and read back as such. Vectors are not exported: the importing memory embeds each
memory's text with its own embedder.

What is not carried: superseded versions and tombstones (the export is the memory as it stands; an import
records the memories anew, and keeps each one's original ``recorded_at`` in ``fields["imported_recorded_at"]``),
the retrieval counts that steer consolidation.

**With history** (``export_jsonl(memory, path, history=True)``, format 2): the store's change feed
(:meth:`t4dm.storage.T4DX.changes`) in the order it was written: every version of every memory (a
``memory`` line, its ``recorded_at`` the time the store learnt it), every deletion (``{"type": "forget",
"id", "recorded_at"}``), every edge version (an ``edge`` line with ``recorded_at``), every removed edge
(``{"type": "unlink", "src", "dst", "rel", "recorded_at"}``), every edge weight set (a ``reweigh`` line, as an
``edge`` line), every batch scale (``{"type": "scale", "factor", "rel", "recorded_at"}``, ``rel`` null for
every relation), every κ set in place, by consolidation or UPDATE_KAPPA (``{"type": "kappa", "id", "kappa",
"recorded_at"}``) and every memory erased, by ``Memory.erase`` or consolidation's PRUNE (``{"type": "erase",
"id", "recorded_at"}``), and every edge erased with an endpoint (``{"type": "erase", "src", "dst", "rel",
"recorded_at"}``). The import replays them at those times (:meth:`~t4dm.storage.T4DX.replay`), each version's
text embedded anew, so the target answers "what did we know when" as the source did: ``history``,
``get(as_of=)``, ``search(as_of=)``, and ends with the same edge weights and κ. Its store's own history must end
before the export's begins (a new memory does).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from datetime import datetime
from typing import Any

from t4dm.errors import InvalidInput, InvalidTime, UnknownId
from t4dm.storage import Change, Edge, Item, KappaUpdate, WeightScale

from .lexical import add_to_lexical, indexed_text

__all__ = ["EXPORT_FORMAT", "HISTORY_FORMAT", "export_jsonl", "import_jsonl"]

EXPORT_FORMAT = 1
HISTORY_FORMAT = 2
_EMBED_BATCH = 256


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _memory_line(item: Item) -> str:
    return json.dumps({
        "type": "memory", "id": item.id, "kind": item.kind, "kappa": item.kappa,
        "valid_from": _iso(item.valid_from), "valid_to": _iso(item.valid_to),
        "recorded_at": _iso(item.recorded_at), "fields": _encode(dict(item.fields)),
    }, ensure_ascii=False)  # fmt: skip


def _edge_line(e: Edge, history: bool, kind: str = "edge") -> str:
    record = {"type": kind, "src": e.src, "dst": e.dst, "rel": e.rel, "weight": e.weight,
              "valid_from": _iso(e.valid_from), "valid_to": _iso(e.valid_to)}  # fmt: skip
    if history:
        record["recorded_at"] = _iso(e.recorded_at)
    return json.dumps(record)


def export_jsonl(memory: Any, path: str | os.PathLike[str], *, history: bool = False) -> dict[str, int]:
    """Write ``memory``'s live memories and the edges between them to ``path`` (replaced when the whole file
    is written); returns ``{"memories": n, "edges": m}``. With ``history``: every version, deletion, edge
    and removed edge the store holds, edge weights set and batch scales, in the order written (format 2); the
    counts are then of versions, and ``forgotten``, ``unlinked``, ``reweighed``, ``scales``, ``kappas``,
    ``erased`` and ``erased_edges`` are added."""
    from t4dm.storage.fsutil import publish_bytes

    if history:
        return _export_history(memory, os.fspath(path))
    items = list(memory.db.scan())
    ids = {item.id for item in items}
    edges = [e for e in memory.db.edges(sorted(ids), direction="out") if e.dst in ids] if ids else []
    header = {"type": "t4dm-memory", "format": EXPORT_FORMAT, "embedder": memory.embedder.name,
              "dim": memory.embedder.dim}  # fmt: skip
    lines = [json.dumps(header)]
    lines.extend(_memory_line(item) for item in items)
    lines.extend(_edge_line(e, history=False) for e in edges)
    publish_bytes(os.fspath(path), ("\n".join(lines) + "\n").encode("utf-8"))
    return {"memories": len(items), "edges": len(edges)}


def _export_history(memory: Any, path: str) -> dict[str, int]:
    from t4dm.storage.fsutil import publish_bytes

    header = {"type": "t4dm-memory", "format": HISTORY_FORMAT, "history": True,
              "embedder": memory.embedder.name, "dim": memory.embedder.dim}  # fmt: skip
    lines = [json.dumps(header)]
    counts = {
        "memories": 0,
        "edges": 0,
        "forgotten": 0,
        "unlinked": 0,
        "reweighed": 0,
        "scales": 0,
        "kappas": 0,
        "erased": 0,
        "erased_edges": 0,
    }
    with memory._lock:
        changes = list(memory.db.changes())
    for change in changes:
        record = change.record
        if isinstance(record, WeightScale):
            lines.append(json.dumps({"type": "scale", "factor": record.factor, "rel": record.rel,
                                     "recorded_at": _iso(record.recorded_at)}))  # fmt: skip
            counts["scales"] += 1
        elif isinstance(record, KappaUpdate):
            lines.append(json.dumps({"type": "kappa", "id": record.id, "kappa": record.kappa,
                                     "recorded_at": _iso(record.recorded_at)}))  # fmt: skip
            counts["kappas"] += 1
        elif change.op == "weight":
            lines.append(_edge_line(record, history=True, kind="reweigh"))
            counts["reweighed"] += 1
        elif isinstance(record, Item) and change.op == "erase":
            lines.append(
                json.dumps({"type": "erase", "id": record.id, "recorded_at": _iso(record.recorded_at)})
            )
            counts["erased"] += 1
        elif change.op == "erase":  # an edge erased with an endpoint
            lines.append(json.dumps({"type": "erase", "src": record.src, "dst": record.dst, "rel": record.rel,
                                     "recorded_at": _iso(record.recorded_at)}))  # fmt: skip
            counts["erased_edges"] += 1
        elif isinstance(record, Item):
            if change.op == "put":
                lines.append(_memory_line(record))
                counts["memories"] += 1
            else:
                lines.append(
                    json.dumps({"type": "forget", "id": record.id, "recorded_at": _iso(record.recorded_at)})
                )
                counts["forgotten"] += 1
        elif change.op == "put":
            lines.append(_edge_line(record, history=True))
            counts["edges"] += 1
        else:
            lines.append(json.dumps({"type": "unlink", "src": record.src, "dst": record.dst, "rel": record.rel,
                                     "recorded_at": _iso(record.recorded_at)}))  # fmt: skip
            counts["unlinked"] += 1
    publish_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return counts


def _time(record: dict[str, Any], key: str, where: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}.{key}", value, "expected an ISO 8601 time or null") from exc
    if parsed.tzinfo is None:
        raise InvalidInput(f"{where}.{key}", value, "a time without a time zone")
    return parsed


def _records(path: str) -> tuple[int, list[dict[str, Any]]]:
    """The export's format and its records after the header, each with ``"_line"`` (its line number)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = [line for line in f.read().splitlines() if line.strip()]
    except OSError as exc:
        raise InvalidInput("path", path, f"cannot be read: {exc}") from exc
    records = []
    for n, line in enumerate(raw, start=1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"line {n}", line[:80], f"not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise InvalidInput(f"line {n}", line[:80], "not a JSON object")
        record["_line"] = n
        records.append(record)
    if not records or records[0].get("type") != "t4dm-memory":
        raise InvalidInput("path", path, "not a T4DM memory export (no header line)")
    form = records[0].get("format")
    if form not in (EXPORT_FORMAT, HISTORY_FORMAT):
        raise InvalidInput(
            "path",
            path,
            f"export format {form!r}, expected {EXPORT_FORMAT} or {HISTORY_FORMAT} (with history)",
        )
    return form, records[1:]


def _memory(record: dict[str, Any], where: str, history: bool) -> Item:
    fields = record.get("fields")
    if not isinstance(fields, dict) or not isinstance(fields.get("text"), str) or not fields["text"].strip():
        raise InvalidInput(f"{where}.fields", fields, "a memory needs fields with a non-empty text")
    kappa = record.get("kappa", 0.0)
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.0 <= kappa <= 1.0:
        raise InvalidInput(f"{where}.kappa", kappa, "must be a number in [0, 1]")
    if not isinstance(record.get("id"), str) or not isinstance(record.get("kind"), str):
        raise InvalidInput(where, record.get("id"), "a memory needs a string id and kind")
    fields = _decode(fields)
    recorded = None
    if history:
        recorded = _recorded(record, where)
    elif record.get("recorded_at") is not None:
        fields["imported_recorded_at"] = record["recorded_at"]
    return Item(vector=None, id=record["id"], kind=record["kind"], kappa=float(kappa), fields=fields,
                valid_from=_time(record, "valid_from", where), valid_to=_time(record, "valid_to", where),
                recorded_at=recorded)  # fmt: skip


def _ends(record: dict[str, Any], where: str) -> tuple[str, str, str]:
    if not all(isinstance(record.get(k), str) and record[k] for k in ("src", "dst", "rel")):
        raise InvalidInput(
            where, {k: v for k, v in record.items() if k != "_line"}, "an edge needs string src, dst and rel"
        )
    return record["src"], record["dst"], record["rel"]


def _edge(record: dict[str, Any], where: str, history: bool) -> Edge:
    weight = record.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise InvalidInput(f"{where}.weight", weight, "must be a finite number")
    src, dst, rel = _ends(record, where)
    return Edge(src, dst, rel=rel, weight=float(weight), valid_from=_time(record, "valid_from", where),
                valid_to=_time(record, "valid_to", where),
                recorded_at=_recorded(record, where) if history else None)  # fmt: skip


def _recorded(record: dict[str, Any], where: str) -> datetime:
    recorded = _time(record, "recorded_at", where)
    if recorded is None:
        raise InvalidInput(
            f"{where}.recorded_at", None, "a line of an export with history needs its recorded_at"
        )
    return recorded


def _read(path: str, records: list[dict[str, Any]]) -> tuple[list[Item], list[Edge]]:
    """Parse and check the records of a format-1 export; nothing is written here."""
    items: list[Item] = []
    edges: list[Edge] = []
    for record in records:
        where = f"line {record['_line']}"
        kind = record.get("type")
        if kind == "memory":
            items.append(_memory(record, where, history=False))
        elif kind == "edge":
            edges.append(_edge(record, where, history=False))
        else:
            raise InvalidInput(f"{where}.type", kind, "expected 'memory' or 'edge'")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise InvalidInput("path", path, "names a memory id twice")
    known = set(ids)
    for e in edges:
        if e.src not in known or e.dst not in known:
            raise InvalidInput("path", path, f"an edge {e.src} -> {e.dst} leaves the exported memories")
    return items, edges


def _read_history(records: list[dict[str, Any]]) -> tuple[list[Change], list[int]]:
    """The changes of a format-2 export, and the line of each."""
    changes: list[Change] = []
    for record in records:
        where = f"line {record['_line']}"
        kind = record.get("type")
        if kind == "memory":
            change = Change(0, "put", _memory(record, where, history=True))
        elif kind == "edge":
            change = Change(0, "put", _edge(record, where, history=True))
        elif kind == "erase" and "id" not in record:  # an edge's erasure names its ends
            src, dst, rel = _ends(record, where)
            change = Change(0, "erase", Edge(src, dst, rel, recorded_at=_recorded(record, where)))
        elif kind in ("forget", "erase"):
            if not isinstance(record.get("id"), str):
                raise InvalidInput(f"{where}.id", record.get("id"), f"a {kind} line needs a string id")
            op = "delete" if kind == "forget" else "erase"  # a forget line is a deletion (it keeps the past)
            change = Change(0, op, Item(None, record["id"], recorded_at=_recorded(record, where)))
        elif kind == "unlink":
            src, dst, rel = _ends(record, where)
            change = Change(0, "delete", Edge(src, dst, rel, recorded_at=_recorded(record, where)))
        elif kind == "reweigh":
            change = Change(0, "weight", _edge(record, where, history=True))
        elif kind == "scale":
            factor, rel = record.get("factor"), record.get("rel")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)):
                raise InvalidInput(f"{where}.factor", factor, "must be a number")
            if rel is not None and not isinstance(rel, str):
                raise InvalidInput(f"{where}.rel", rel, "must be a relation name or null")
            change = Change(0, "scale", WeightScale(float(factor), rel, _recorded(record, where)))
        elif kind == "kappa":
            id, kappa = record.get("id"), record.get("kappa")
            if not isinstance(id, str):
                raise InvalidInput(f"{where}.id", id, "a kappa line needs a string id")
            if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
                raise InvalidInput(f"{where}.kappa", kappa, "must be a number")
            change = Change(0, "kappa", KappaUpdate(id, float(kappa), _recorded(record, where)))
        else:
            raise InvalidInput(
                f"{where}.type", kind,
                "expected 'memory', 'edge', 'forget', 'unlink', 'reweigh', 'scale', 'kappa' or 'erase'",
            )  # fmt: skip
        changes.append(change)
    return changes, [record["_line"] for record in records]


def _embed(memory: Any, items: list[Item]) -> list[Any]:
    """The vectors of ``items``' texts by ``memory``'s embedder (each distinct text once)."""
    texts = [indexed_text(item.fields) for item in items]
    unique = list(dict.fromkeys(texts))
    blocks = [
        memory.embedder.embed(unique[i : i + _EMBED_BATCH]) for i in range(0, len(unique), _EMBED_BATCH)
    ]
    vectors = dict(zip(unique, (row for block in blocks for row in block), strict=True))
    return [vectors[text] for text in texts]


def import_jsonl(memory: Any, path: str | os.PathLike[str]) -> dict[str, int]:
    """Add the memories and edges of an export to ``memory``, embedding each text with ``memory``'s embedder;
    returns ``{"memories": n, "edges": m}`` (and ``forgotten``, ``unlinked``, ``reweighed``, ``scales`` for an
    export with history).
    The whole file is checked (and its texts embedded) before the first write, and an id already in
    ``memory`` refuses the import: a bad file writes nothing. An export with history is replayed at its own
    times (see the module's docstring)."""
    folder = os.fspath(path)
    form, records = _records(folder)
    if form == HISTORY_FORMAT:
        return _import_history(memory, folder, records)
    items, edges = _read(folder, records)
    with memory._lock:
        taken = memory.db.matching([item.id for item in items])  # live ids here already (one batched locate)
        if taken:
            raise InvalidInput("path", folder, f"memory ids already in this store, e.g. {taken[:3]}")
        for item, vector in zip(items, _embed(memory, items), strict=True):
            item.vector = vector
        if items:
            memory.db.insert(items)
        if edges:
            memory.db.add_edges(edges)
        lexical = memory.lexical
        for item in items:
            add_to_lexical(lexical, item.id, item.fields)
    return {"memories": len(items), "edges": len(edges)}


def _import_history(memory: Any, folder: str, records: list[dict[str, Any]]) -> dict[str, int]:
    changes, lines = _read_history(records)
    puts = [i for i, c in enumerate(changes) if c.op == "put" and isinstance(c.record, Item)]
    counts = {
        "memories": len(puts),
        "edges": sum(c.op == "put" and isinstance(c.record, Edge) for c in changes),
        "forgotten": sum(c.op == "delete" and isinstance(c.record, Item) for c in changes),
        "unlinked": sum(c.op == "delete" and isinstance(c.record, Edge) for c in changes),
        "reweighed": sum(c.op == "weight" for c in changes),
        "scales": sum(c.op == "scale" for c in changes),
        "kappas": sum(c.op == "kappa" for c in changes),
        "erased": sum(c.op == "erase" and isinstance(c.record, Item) for c in changes),
        "erased_edges": sum(c.op == "erase" and isinstance(c.record, Edge) for c in changes),
    }
    with memory._lock:
        ids = list(dict.fromkeys(changes[i].record.id for i in puts))
        taken = memory.db.matching(ids)
        if taken:
            raise InvalidInput("path", folder, f"memory ids already in this store, e.g. {taken[:3]}")
        for i, vector in zip(puts, _embed(memory, [changes[i].record for i in puts]), strict=True):
            changes[i].record.vector = vector
        try:
            memory.db.replay(changes)
        except (InvalidInput, UnknownId) as exc:
            raise _at_line(exc, lines) from exc
        final: dict[str, Item | None] = {}
        for change in changes:
            if isinstance(change.record, Item):
                final[change.record.id] = change.record if change.op == "put" else None
        lexical = memory.lexical
        for id, item in final.items():
            if item is not None:
                add_to_lexical(lexical, id, item.fields)
    return counts


def _at_line(exc: Exception, lines: list[int]) -> Exception:
    """A replay's error about ``changes[i]`` renamed to the line of the file it came from."""
    match = re.fullmatch(r"changes\[(\d+)\](?:\.record(?=\.|$))?(.*)", str(getattr(exc, "field", "")))
    if match is None:
        return exc
    field = f"line {lines[int(match[1])]}{match[2]}"
    if isinstance(exc, UnknownId):
        return UnknownId(exc.value, field)
    if type(exc) in (InvalidInput, InvalidTime):
        return type(exc)(field, exc.value, exc.reason)  # type: ignore[attr-defined]
    return exc
