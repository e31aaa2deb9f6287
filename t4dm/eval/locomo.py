"""``t4dm eval locomo``: evidence retrieval on LoCoMo conversations, T4DM beside dense-only and BM25-only.

One memory per conversation turn (its text and speaker, plus the caption of a shared image), the session's
date as its valid time, memories scoped per conversation (``user_id`` = the sample id, ``run_id`` = the
session). Every question of categories 1–4 that has evidence retrieves the top ``max(k)`` memories; a
memory stands for the turns it holds (a duplicate turn merged into another memory counts for both), and

* evidence recall@k: the fraction of the question's evidence turns among the top-k turns;
* session recall@k: the fraction of the evidence's sessions that the top-k turns touch;
* MRR: the reciprocal rank of the first evidence turn (0 when none is in the top ``max(k)``);

overall and per category, with query latency. The baselines use the same store and embeddings: ``dense``
is the store's cosine search alone, ``bm25`` the lexical index alone. Evidence ids are normalised
(``"D8:6; D9:17"`` is two ids, ``"D:11:26"`` is ``D11:26``, ``"D30:05"`` is ``D30:5``); ids that name no
turn, and questions left without evidence, are counted and reported, not scored.

LoCoMo (Maharana et al., ACL 2024) is CC BY-NC 4.0: read it from where it lies, never copy it here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from t4dm.errors import InvalidInput

__all__ = ["CATEGORIES", "load_locomo", "run_locomo_eval"]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
SCORED = (1, 2, 3, 4)
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)$")


@dataclass(frozen=True, slots=True)
class Turn:
    dia_id: str
    session: int
    speaker: str
    text: str
    when: datetime | None


@dataclass(frozen=True, slots=True)
class Question:
    sample: str
    text: str
    category: int
    evidence: tuple[str, ...]


def parse_session_date(text: str) -> datetime | None:
    """``"1:56 pm on 8 May, 2023"`` → 2023-05-08 13:56 UTC; None when it does not parse."""
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%H:%M on %d %B, %Y"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def normalise_evidence(raw: Sequence[str]) -> list[str]:
    """``["D8:6; D9:17", "D:11:26", "D30:05", "D"]`` → ``["D8:6", "D9:17", "D11:26", "D30:5"]``."""
    out = []
    for entry in raw:
        for session, turn in _EVIDENCE.findall(str(entry)):
            out.append(f"D{int(session)}:{int(turn)}")
    return out


def load_locomo(path: str) -> tuple[dict[str, list[Turn]], list[Question], dict[str, int]]:
    """Turns per sample, the scored questions, and counts of what was normalised or dropped."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput("data", path, f"cannot read LoCoMo JSON: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInput("data", path, "expected a list of LoCoMo samples")
    turns: dict[str, list[Turn]] = {}
    questions: list[Question] = []
    counts = {"samples": 0, "turns": 0, "questions": 0, "adversarial_skipped": 0,
              "evidence_ids_rewritten": 0, "evidence_ids_unknown": 0, "questions_without_evidence": 0}  # fmt: skip
    for sample in data:
        sid = str(sample["sample_id"])
        conv = sample["conversation"]
        own: list[Turn] = []
        for key, value in conv.items():
            match = _SESSION.match(key)
            if not match or not isinstance(value, list):
                continue
            n = int(match.group(1))
            when = parse_session_date(str(conv.get(f"session_{n}_date_time", "")))
            for turn in value:
                text = str(turn.get("text", "")).strip()
                caption = turn.get("blip_caption")
                if caption:
                    text = f"{text} [shares a photo of {caption}]".strip()
                if not text:
                    continue
                own.append(Turn(str(turn["dia_id"]), n, str(turn.get("speaker", "")), text, when))
        own.sort(key=lambda t: (t.session, _turn_number(t.dia_id)))
        turns[sid] = own
        known = {t.dia_id for t in own}
        counts["samples"] += 1
        counts["turns"] += len(own)
        for qa in sample.get("qa", []):
            category = int(qa.get("category", 0))
            if category not in SCORED:
                counts["adversarial_skipped"] += 1
                continue
            raw = [str(e) for e in qa.get("evidence", [])]
            ids = normalise_evidence(raw)
            counts["evidence_ids_rewritten"] += sum(1 for e in raw if not re.fullmatch(r"D\d+:\d+", e))
            valid = [e for e in dict.fromkeys(ids) if e in known]
            counts["evidence_ids_unknown"] += len(set(ids)) - len(valid)
            if not valid:
                counts["questions_without_evidence"] += 1
                continue
            questions.append(Question(sid, str(qa["question"]), category, tuple(valid)))
            counts["questions"] += 1
    return turns, questions, counts


def _turn_number(dia_id: str) -> int:
    match = _EVIDENCE.fullmatch(dia_id)
    return int(match.group(2)) if match else 0


def _session_of(dia_id: str) -> int:
    match = _EVIDENCE.fullmatch(dia_id)
    return int(match.group(1)) if match else -1


def _score(ranked: list[str], question: Question, ks: Sequence[int]) -> dict[str, float]:
    evidence = set(question.evidence)
    sessions = {_session_of(e) for e in evidence}
    out: dict[str, float] = {}
    for k in ks:
        top = ranked[:k]
        out[f"recall@{k}"] = len(evidence & set(top)) / len(evidence)
        out[f"session_recall@{k}"] = len(sessions & {_session_of(t) for t in top}) / len(sessions)
    first = next((i for i, t in enumerate(ranked) if t in evidence), None)
    out["mrr"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def _aggregate(rows: list[tuple[int, dict[str, float]]], latencies: list[float]) -> dict[str, Any]:
    keys = list(rows[0][1]) if rows else []
    result: dict[str, Any] = {key: float(np.mean([r[key] for _, r in rows])) for key in keys}
    by_category: dict[str, Any] = {}
    for category in SCORED:
        mine = [r for c, r in rows if c == category]
        if mine:
            by_category[CATEGORIES[category]] = {
                "questions": len(mine),
                **{key: float(np.mean([r[key] for r in mine])) for key in keys},
            }
    result["by_category"] = by_category
    result["questions"] = len(rows)
    result["latency_ms"] = {
        "p50": float(np.percentile(latencies, 50) * 1e3) if latencies else 0.0,
        "p95": float(np.percentile(latencies, 95) * 1e3) if latencies else 0.0,
    }
    return result


def _sleep(
    memory: Any, holds: dict[str, list[str]], questions: list[Question], days: float
) -> dict[str, Any]:
    """Consolidate ``memory`` as ``days`` after now; what it made and forgot."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days >= 0:
        raise InvalidInput("consolidate_after_days", days, "expected a number of days >= 0")
    owner = {item.id: item.fields.get("user_id") for item in memory.db.scan()}
    report = memory.consolidate(now=datetime.now(timezone.utc) + timedelta(days=days), progress=False)
    forgotten = {(owner.get(id), dia) for id in report.pruned_ids for dia in holds.get(id, ())}
    evidence = {(q.sample, e) for q in questions for e in q.evidence}
    return {
        "days": days,
        "seconds": report.seconds,
        "summary": report.summary(),
        "memories_after": len(memory),
        "prototypes": report.prototypes,
        "prototype_members": report.members,
        "pruned_memories": report.pruned,
        "pruned_turns": len(forgotten),
        "evidence_turns_forgotten": len(forgotten & evidence),
        "evidence_turns": len(evidence),
    }


def run_locomo_eval(
    data: str,
    out: str | None = None,
    ks: Sequence[int] = (1, 5, 10, 20),
    embedder: Any = None,
    workdir: str | None = None,
    say: Callable[[str], None] = print,
    seed: int | None = 0,
    consolidate_after_days: float | None = None,
) -> dict[str, Any]:
    """Ingest every conversation of ``data`` into a fresh store, score the three methods, write ``out``.

    The memories' ids come from ``seed`` (:func:`t4dm.storage.keys.seeded_ids`; None: random), so that ties
    between equal scores, broken by id, fall the same way in every run and two runs give the same figures.

    ``consolidate_after_days``: between ingest and questions, sleep (:meth:`~t4dm.memory.Memory.consolidate`:
    NREM, REM, PRUNE) as if that many days had passed with no search — what consolidation costs retrieval.
    A REM prototype stands for no turn (a result slot it takes is a miss); the report counts the memories
    PRUNE forgot and the question evidence among their turns."""
    from t4dm.memory import Memory
    from t4dm.storage.keys import seeded_ids

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InvalidInput("k", ks, "expected positive integers")
    turns, questions, counts = load_locomo(data)
    say(f"LoCoMo: {counts['samples']} conversations, {counts['turns']} turns, {counts['questions']} questions "
        f"(categories 1-4 with evidence; {counts['questions_without_evidence']} without usable evidence, "
        f"{counts['evidence_ids_unknown']} evidence ids naming no turn)")  # fmt: skip
    root = tempfile.mkdtemp(prefix="t4dm-locomo-", dir=workdir)
    depth = max(ks)
    try:
        start = time.perf_counter()
        ids = seeded_ids(seed) if seed is not None else contextlib.nullcontext()
        with Memory(os.path.join(root, "store"), embedder=embedder) as memory, ids:
            holds: dict[str, list[str]] = {}  # memory id -> the turns it stands for
            for sid, own in turns.items():
                for session in sorted({t.session for t in own}):
                    batch = [t for t in own if t.session == session]
                    results = memory.add(
                        [{"speaker": t.speaker, "content": t.text, "valid_at": t.when,
                          "metadata": {"dia_id": t.dia_id}} for t in batch],
                        user_id=sid, run_id=f"{sid}/session_{session}",
                    )  # fmt: skip
                    for t, r in zip(batch, results, strict=True):
                        if r.id is not None:
                            holds.setdefault(r.id, []).append(t.dia_id)
            ingest_s = time.perf_counter() - start
            stored = len(memory)
            say(f"ingested {counts['turns']} turns into {stored} memories in {ingest_s:.1f} s "
                f"({memory.embedder.name})")  # fmt: skip
            sleep = None
            if consolidate_after_days is not None:
                sleep = _sleep(memory, holds, questions, consolidate_after_days)
                say(f"consolidated as {consolidate_after_days:g} days later in {sleep['seconds']:.1f} s: "
                    f"{sleep['summary']}; {sleep['pruned_turns']} turns forgotten, "
                    f"{sleep['evidence_turns_forgotten']} of them question evidence")  # fmt: skip

            def expand(ids: list[str]) -> list[str]:
                ranked: list[str] = []
                for id in ids:
                    ranked.extend(d for d in holds.get(id, ()) if d not in ranked)
                return ranked

            def t4dm_method(q: Question) -> list[str]:
                return [h.id for h in memory.search(q.text, user_id=q.sample, k=depth)]

            def dense_method(q: Question) -> list[str]:
                vector = memory.embedder.embed([q.text])[0]
                return [h.id for h in memory.db.search(vector, k=depth, where={"user_id": q.sample})]

            def bm25_method(q: Question) -> list[str]:
                return [id for id, _ in memory.lexical.search(q.text, depth, user_id=q.sample)]

            methods = {"t4dm": t4dm_method, "dense": dense_method, "bm25": bm25_method}
            results: dict[str, Any] = {}
            for name, method in methods.items():
                method(questions[0])  # warm-up
                rows, latencies = [], []
                for q in questions:
                    begin = time.perf_counter()
                    ids = method(q)
                    latencies.append(time.perf_counter() - begin)
                    rows.append((q.category, _score(expand(ids), q, ks)))
                results[name] = _aggregate(rows, latencies)
                r = results[name]
                say(f"{name:6s} recall@10 {r.get('recall@10', float('nan')):.3f}  session_recall@10 "
                    f"{r.get('session_recall@10', float('nan')):.3f}  MRR {r['mrr']:.3f}  "
                    f"p50 {r['latency_ms']['p50']:.2f} ms  p95 {r['latency_ms']['p95']:.2f} ms")  # fmt: skip
            report = {
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "data": os.path.abspath(data),
                "embedder": memory.embedder.name,
                "id_seed": seed,
                "ks": ks,
                "counts": {**counts, "memories": stored, "ingest_s": ingest_s},
                "results": results,
            }
            if sleep is not None:
                report["consolidation"] = sleep
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        say(f"results written to {out}")
    return report
