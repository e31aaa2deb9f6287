"""BM25 over the stored texts, kept up to date with every write (never rebuilt per query).

One partition per ``user_id`` (a user's memories are their own corpus: document frequencies and lengths
are counted per user, and a query scoped to a user reads only that partition). Terms are lower-cased
words, English stop words dropped, Snowball-stemmed. The index lives in memory and is built once when a
:class:`~t4dm.memory.Memory` opens its store (one SCAN of the live items), then follows every add,
update and delete.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import snowballstemmer

__all__ = ["LexicalIndex", "add_to_lexical", "indexed_text", "tokenize"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
# a short English stop-word list (function words only: "not", numbers and pronouns of people stay)
STOP_WORDS = frozenset(
    """a an the and or but if then else of at by for with about against between into through during
    before after above below to from up down in out on off over under again further once here there when
    where why how all any both each few more most other some such no nor only own same so than too very
    s t can will just don should now is are was were be been being have has had having do does did doing
    would could ought i'm you're he's she's it's we're they're i've you've we've they've i'd you'd he'd
    she'd we'd they'd i'll you'll he'll she'll we'll they'll isn't aren't wasn't weren't hasn't haven't
    hadn't doesn't don't didn't won't wouldn't shan't shouldn't can't cannot couldn't mustn't let's
    that's who's what's here's there's when's where's why's how's this that these those am it its itself
    what which whom whose as until while me my myself our ours ourselves your yours yourself yourselves
    him his himself her hers herself them their theirs themselves they we you he she i it us""".split()  # noqa: SIM905
)
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def tokenize(text: str) -> list[str]:
    """The BM25 terms of ``text``."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


@dataclass(slots=True)
class _Corpus:
    """BM25 statistics of a set of documents, each a bag of terms that can grow and shrink.

    Each document holds an integer slot (reused after it leaves); postings map slots to term frequencies, and
    scoring reads them as arrays (built per term on first use after a change), so a query costs a few NumPy
    operations per query term rather than Python work per posting."""

    postings: dict[str, dict[int, int]] = field(default_factory=dict)  # term -> {slot: tf}
    slots: dict[Any, int] = field(default_factory=dict)  # doc -> slot
    docs: list[Any] = field(default_factory=list)  # slot -> doc (None while free)
    free: list[int] = field(default_factory=list)  # slots to reuse
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(16))  # slot -> terms
    parts: dict[Any, int] = field(default_factory=dict)  # doc -> bags added and not yet taken out
    total: int = 0
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # term -> (slots, tfs)

    def __len__(self) -> int:
        return len(self.slots)

    def tf(self, doc: Any, term: str) -> int:
        return self.postings[term][self.slots[doc]]

    def extend(self, doc: Any, terms: Mapping[str, int]) -> None:
        slot = self.slots.get(doc)
        if slot is None:
            slot = self.free.pop() if self.free else len(self.docs)
            if slot == len(self.docs):
                self.docs.append(doc)
                if slot == len(self.lengths):
                    self.lengths = np.concatenate([self.lengths, np.zeros(len(self.lengths))])
            else:
                self.docs[slot] = doc
            self.slots[doc] = slot
        for term, tf in terms.items():
            docs = self.postings.setdefault(term, {})
            docs[slot] = docs.get(slot, 0) + tf
            self.arrays.pop(term, None)
        n = sum(terms.values())
        self.lengths[slot] += n
        self.parts[doc] = self.parts.get(doc, 0) + 1
        self.total += n

    def shrink(self, doc: Any, terms: Mapping[str, int]) -> None:
        slot = self.slots[doc]
        for term, tf in terms.items():
            docs = self.postings[term]
            left = docs[slot] - tf
            if left:
                docs[slot] = left
            else:
                del docs[slot]
                if not docs:
                    del self.postings[term]
            self.arrays.pop(term, None)
        n = sum(terms.values())
        self.total -= n
        if self.parts[doc] == 1:
            del self.parts[doc], self.slots[doc]
            self.docs[slot] = None
            self.lengths[slot] = 0
            self.free.append(slot)
        else:
            self.lengths[slot] -= n
            self.parts[doc] -= 1

    def score(
        self, terms: Mapping[str, int], k1: float, b: float, top: int | None = None
    ) -> tuple[list[Any], np.ndarray]:
        """The documents that hold a query term and their BM25 scores (the float operations, in their order,
        of ``Σ_terms qtf·idf·tf·(k1 + 1) / (tf + k1·(1 − b + b·len/avg))``, one document at a time); with
        ``top``, only those scoring at least the ``top``-th best (ties at the cut kept)."""
        n_docs = len(self.slots)
        if n_docs == 0:
            return [], np.zeros(0)
        avg = self.total / n_docs or 1.0
        scores = np.zeros(len(self.docs))
        for term, qtf in terms.items():
            docs = self.postings.get(term)
            if not docs:
                continue
            idf = math.log(1.0 + (n_docs - len(docs) + 0.5) / (len(docs) + 0.5))
            pair = self.arrays.get(term)
            if pair is None:
                pair = self.arrays[term] = (
                    np.fromiter(docs.keys(), np.int64, len(docs)),
                    np.fromiter(docs.values(), np.float64, len(docs)),
                )
            slots, tf = pair
            norm = tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * self.lengths[slots] / avg))
            scores[slots] += qtf * idf * norm  # a term holds a slot once: no repeated index
        hit = np.flatnonzero(scores)  # every term's share is > 0 (idf > 0, tf > 0)
        values = scores[hit]
        if top is not None and len(hit) > top:
            keep = values >= np.partition(values, len(values) - top)[len(values) - top]
            hit, values = hit[keep], values[keep]
        return [self.docs[i] for i in hit], values


def _best(pairs: list[tuple[Any, float]], k: int) -> list[tuple[Any, float]]:
    """The ``k`` best ``(doc, score)``, best first, ties by doc."""
    if len(pairs) > k:
        values = np.fromiter((v for _, v in pairs), np.float64, len(pairs))
        cut = np.partition(values, len(values) - k)[len(values) - k]
        pairs = [pair for pair, value in zip(pairs, values, strict=True) if value >= cut]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    return pairs[:k]


@dataclass(slots=True)
class _Partition:
    docs: _Corpus = field(default_factory=_Corpus)  # one document per memory
    runs: _Corpus = field(default_factory=_Corpus)  # one per (agent_id, run_id): its memories' terms together
    scopes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # (agent_id, run_id)
    terms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # doc id -> its distinct terms


class LexicalIndex:
    """BM25 (``k1``, ``b``) partitioned by user; ``add`` / ``remove`` keep it current.

    Besides each memory, every run (``run_id``: a conversation session, an episode) is a document of its
    own, its memories' terms together, so that a query can also score whole runs (:meth:`search_runs`).
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._parts: dict[str | None, _Partition] = {}
        self._where: dict[str, str | None] = {}  # doc id -> its partition's user

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, id: str) -> bool:
        return id in self._where

    def add(
        self, id: str, text: str, user_id: str | None, agent_id: str | None = None, run_id: str | None = None
    ) -> None:
        """Index (or re-index) document ``id``."""
        if id in self._where:
            self.remove(id)
        part = self._parts.setdefault(user_id, _Partition())
        terms = Counter(tokenize(text))
        part.docs.extend(id, terms)
        if run_id is not None:
            part.runs.extend((agent_id, run_id), terms)
        part.scopes[id] = (agent_id, run_id)
        part.terms[id] = tuple(terms)  # the counts stay in the postings (a third of a Counter's memory)
        self._where[id] = user_id

    def remove(self, id: str) -> None:
        """Drop document ``id`` (no-op when absent)."""
        if id not in self._where:
            return
        part = self._parts[self._where.pop(id)]
        terms = {term: part.docs.tf(id, term) for term in part.terms.pop(id)}
        scope = part.scopes.pop(id)
        part.docs.shrink(id, terms)
        if scope[1] is not None:
            part.runs.shrink(scope, terms)

    def run_of(self, id: str) -> tuple[str | None, str] | None:
        """``(user_id, run_id)`` of document ``id``: its run, told apart from another user's run of the same
        name (None when it has no run or is not indexed)."""
        user = self._where.get(id, _ABSENT)
        if user is _ABSENT:
            return None
        run = self._parts[user].scopes[id][1]  # type: ignore[index]
        return None if run is None else (user, run)  # type: ignore[return-value]

    def search(
        self,
        query: str,
        k: int,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        any_user: bool = False,
    ) -> list[tuple[str, float]]:
        """The ``k`` best ``(id, score)`` for ``query`` within the scope, best first. ``any_user`` reads
        every partition (a query scoped only by agent or run); otherwise only ``user_id``'s."""
        terms = Counter(tokenize(query))
        if not terms:
            return []
        scored: list[tuple[str, float]] = []
        scoped = agent_id is not None or run_id is not None
        for _, part in self._partitions(user_id, any_user):
            # unscoped, a partition's k best (ties at the cut kept) hold every one of the overall k best
            ids, scores = part.docs.score(terms, self.k1, self.b, top=None if scoped else k)
            pairs = zip(ids, scores.tolist(), strict=True)
            if scoped:
                scopes = part.scopes
                pairs = (
                    (id, s)
                    for id, s in pairs
                    if (agent_id is None or scopes[id][0] == agent_id)
                    and (run_id is None or scopes[id][1] == run_id)
                )
            scored.extend(pairs)
        return _best(scored, k)

    def search_runs(
        self, query: str, *, user_id: str | None = None, agent_id: str | None = None, any_user: bool = False
    ) -> dict[tuple[str | None, str], float]:
        """BM25 of ``query`` against every run of the scope taken as one document: ``{(user_id, run_id):
        score}`` (the key :meth:`run_of` gives) for the runs that match a term; each user's runs are scored
        within that user's partition, and a run split across agents scores per agent (the best counts)."""
        terms = Counter(tokenize(query))
        out: dict[tuple[str | None, str], float] = {}
        if not terms:
            return out
        for user, part in self._partitions(user_id, any_user):
            runs, scores = part.runs.score(terms, self.k1, self.b)
            for (agent, run), score in zip(runs, scores.tolist(), strict=True):
                if (agent_id is None or agent == agent_id) and score > out.get((user, run), 0.0):
                    out[user, run] = score
        return out

    def _partitions(self, user_id: str | None, any_user: bool) -> Iterable[tuple[str | None, _Partition]]:
        if any_user:
            return self._parts.items()
        part = self._parts.get(user_id)
        return [(user_id, part)] if part is not None else []


_ABSENT = object()


def indexed_text(fields: Mapping[str, Any]) -> str:
    """What is embedded and indexed for a memory: its text, said by its speaker when it has one
    (``"Maya: I moved to Porto"``), so that who said it is part of what a search matches."""
    text = fields.get("text", "")
    speaker = fields.get("speaker")
    return f"{speaker}: {text}" if speaker else text


def add_to_lexical(index: LexicalIndex, id: str, fields: Mapping[str, Any]) -> None:
    index.add(id, indexed_text(fields), fields.get("user_id"), fields.get("agent_id"), fields.get("run_id"))
