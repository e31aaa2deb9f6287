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
"""

from __future__ import annotations

import base64
import json
import math
import os
from datetime import datetime
from typing import Any

from t4dm.errors import InvalidInput
from t4dm.storage import Edge, Item

from .lexical import add_to_lexical, indexed_text

__all__ = ["EXPORT_FORMAT", "export_jsonl", "import_jsonl"]

EXPORT_FORMAT = 1
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


def export_jsonl(memory: Any, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write ``memory``'s live memories and the edges between them to ``path`` (replaced when the whole file
    is written); returns ``{"memories": n, "edges": m}``."""
    from t4dm.storage.fsutil import publish_bytes

    items = list(memory.db.scan())
    ids = {item.id for item in items}
    edges = [e for e in memory.db.edges(sorted(ids), direction="out") if e.dst in ids] if ids else []
    header = {"type": "t4dm-memory", "format": EXPORT_FORMAT, "embedder": memory.embedder.name,
              "dim": memory.embedder.dim}  # fmt: skip
    lines = [json.dumps(header)]
    for item in items:
        lines.append(json.dumps({
            "type": "memory", "id": item.id, "kind": item.kind, "kappa": item.kappa,
            "valid_from": _iso(item.valid_from), "valid_to": _iso(item.valid_to),
            "recorded_at": _iso(item.recorded_at), "fields": _encode(dict(item.fields)),
        }, ensure_ascii=False))  # fmt: skip
    for e in edges:
        lines.append(json.dumps({
            "type": "edge", "src": e.src, "dst": e.dst, "rel": e.rel, "weight": e.weight,
            "valid_from": _iso(e.valid_from), "valid_to": _iso(e.valid_to),
        }))  # fmt: skip
    publish_bytes(os.fspath(path), ("\n".join(lines) + "\n").encode("utf-8"))
    return {"memories": len(items), "edges": len(edges)}


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


def _read(path: str) -> tuple[list[Item], list[Edge]]:
    """Parse and check the whole file; nothing is written here."""
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
        records.append(record)
    if not records or records[0].get("type") != "t4dm-memory":
        raise InvalidInput("path", path, "not a T4DM memory export (no header line)")
    if records[0].get("format") != EXPORT_FORMAT:
        raise InvalidInput(
            "path", path, f"export format {records[0].get('format')!r}, expected {EXPORT_FORMAT}"
        )
    items: list[Item] = []
    edges: list[Edge] = []
    for n, record in enumerate(records[1:], start=2):
        where = f"line {n}"
        kind = record.get("type")
        if kind == "memory":
            fields = record.get("fields")
            if (
                not isinstance(fields, dict)
                or not isinstance(fields.get("text"), str)
                or not fields["text"].strip()
            ):
                raise InvalidInput(f"{where}.fields", fields, "a memory needs fields with a non-empty text")
            kappa = record.get("kappa", 0.0)
            if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.0 <= kappa <= 1.0:
                raise InvalidInput(f"{where}.kappa", kappa, "must be a number in [0, 1]")
            if not isinstance(record.get("id"), str) or not isinstance(record.get("kind"), str):
                raise InvalidInput(where, record.get("id"), "a memory needs a string id and kind")
            fields = _decode(fields)
            recorded = record.get("recorded_at")
            if recorded is not None:
                fields["imported_recorded_at"] = recorded
            items.append(Item(vector=None, id=record["id"], kind=record["kind"], kappa=float(kappa), fields=fields,
                              valid_from=_time(record, "valid_from", where),
                              valid_to=_time(record, "valid_to", where)))  # fmt: skip
        elif kind == "edge":
            weight = record.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise InvalidInput(f"{where}.weight", weight, "must be a finite number")
            if not all(isinstance(record.get(k), str) and record[k] for k in ("src", "dst", "rel")):
                raise InvalidInput(where, record, "an edge needs string src, dst and rel")
            edges.append(Edge(record["src"], record["dst"], rel=record["rel"], weight=float(weight),
                              valid_from=_time(record, "valid_from", where),
                              valid_to=_time(record, "valid_to", where)))  # fmt: skip
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


def import_jsonl(memory: Any, path: str | os.PathLike[str]) -> dict[str, int]:
    """Add the memories and edges of an export to ``memory``, embedding each text with ``memory``'s embedder;
    returns ``{"memories": n, "edges": m}``. The whole file is checked (and its texts embedded) before the
    first write, and an id already in ``memory`` refuses the import: a bad file writes nothing."""
    folder = os.fspath(path)
    items, edges = _read(folder)
    with memory._lock:
        taken = memory.db.matching([item.id for item in items])  # live ids here already (one batched locate)
        if taken:
            raise InvalidInput("path", folder, f"memory ids already in this store, e.g. {taken[:3]}")
        texts = [indexed_text(item.fields) for item in items]
        vectors = [
            memory.embedder.embed(texts[i : i + _EMBED_BATCH]) for i in range(0, len(texts), _EMBED_BATCH)
        ]
        rows = [row for block in vectors for row in block]
        for item, vector in zip(items, rows, strict=True):
            item.vector = vector
        if items:
            memory.db.insert(items)
        if edges:
            memory.db.add_edges(edges)
        lexical = memory.lexical
        for item in items:
            add_to_lexical(lexical, item.id, item.fields)
    return {"memories": len(items), "edges": len(edges)}
