"""The lexical index's run documents follow every add and remove: after any sequence of them, scoring runs
equals scoring a fresh index whose documents are each run's live texts put together."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from t4dm.memory.lexical import LexicalIndex

WORDS = ["pottery", "painting", "camping", "the", "and", "kids", "beach", "Caroline", "it's", "of"]
TEXTS = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)  # some only stop words
_SCOPES = st.tuples(TEXTS, st.sampled_from([None, "a1", "a2"]), st.sampled_from([None, "r1", "r2", "r3"]))
OPS = st.lists(
    st.tuples(st.integers(0, 4), st.one_of(st.none(), _SCOPES)), min_size=1, max_size=40
)  # None: remove


def _replay(ops, after_each=None) -> tuple[LexicalIndex, dict[str, tuple[str, str | None, str | None]]]:
    """Apply the adds and removes to a new index; ``after_each(index, live)`` after every one."""
    index, live = LexicalIndex(), {}
    for doc, what in ops:
        id = f"d{doc}"
        if what is None:
            index.remove(id)
            live.pop(id, None)
        else:
            text, agent, run = what
            index.add(id, text, "u", agent, run)
            live[id] = (text, agent, run)
        if after_each is not None:
            after_each(index, live)
    return index, live


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from(["pottery", "kids beach", "Caroline painting pottery", "the and"]))
def test_runs_score_as_their_texts_together(ops, query):
    index, live = _replay(ops)
    reference = LexicalIndex()
    groups: dict[tuple[str | None, str], list[str]] = {}
    for text, agent, run in live.values():
        if run is not None:
            groups.setdefault((agent, run), []).append(text)
    for (agent, run), texts in groups.items():
        reference.add(f"{agent}|{run}", " ".join(texts), "u")
    expected: dict[tuple[str, str], float] = {}
    for key, score in reference.search(query, 100, user_id="u"):
        run = key.split("|")[1]
        expected["u", run] = max(expected.get(("u", run), 0.0), score)
    got = index.search_runs(query, user_id="u")
    assert got.keys() == expected.keys()
    for run, score in expected.items():
        assert math.isclose(got[run], score, rel_tol=1e-12), (run, got, expected)
    # the memories themselves score as a fresh index of the live ones
    fresh = LexicalIndex()
    for id, (text, agent, run) in live.items():
        fresh.add(id, text, "u", agent, run)
    assert index.search(query, 100, user_id="u") == fresh.search(query, 100, user_id="u")
    assert {id: index.run_of(id) for id in live} == {
        id: run and ("u", run) for id, (_, _, run) in live.items()
    }


def test_runs_are_scoped_by_user_and_agent():
    index = LexicalIndex()
    index.add("m1", "pottery class", "u1", "a1", "r1")
    index.add("m2", "pottery kiln pottery", "u1", "a2", "r2")
    index.add("m3", "pottery", "u2", None, "r9")
    index.add("m4", "pottery", "u1", None, None)  # no run: a memory, not part of any run
    index.add("m5", "pottery", "u2", None, "r1")  # another user's run of the same name
    assert set(index.search_runs("pottery", user_id="u1")) == {("u1", "r1"), ("u1", "r2")}
    assert set(index.search_runs("pottery", user_id="u1", agent_id="a1")) == {("u1", "r1")}
    assert set(index.search_runs("pottery", any_user=True)) == {
        ("u1", "r1"),
        ("u1", "r2"),
        ("u2", "r9"),
        ("u2", "r1"),
    }
    assert index.run_of("m5") == ("u2", "r1") and index.run_of("m1") == ("u1", "r1")
    assert index.search_runs("the and", user_id="u1") == {}
    assert index.run_of("m4") is None and index.run_of("absent") is None
    index.remove("m2")
    assert set(index.search_runs("kiln", user_id="u1")) == set()


def _bm25(texts: dict[str, str], query: str, k1: float = 1.2, b: float = 0.75) -> list[tuple[str, float]]:
    """BM25 written out per document in plain Python: the formula the index's arrays must give, bit for bit."""
    from collections import Counter

    from t4dm.memory.lexical import tokenize

    bags = {id: Counter(tokenize(text)) for id, text in texts.items()}
    n_docs = len(bags)
    avg = sum(sum(bag.values()) for bag in bags.values()) / n_docs if n_docs else 1.0
    avg = avg or 1.0
    scores: dict[str, float] = {}
    for term, qtf in Counter(tokenize(query)).items():
        holders = [id for id, bag in bags.items() if term in bag]
        if not holders:
            continue
        idf = math.log(1.0 + (n_docs - len(holders) + 0.5) / (len(holders) + 0.5))
        for id in holders:
            tf, length = bags[id][term], sum(bags[id].values())
            norm = tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length / avg))
            scores[id] = scores.get(id, 0.0) + qtf * idf * norm
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from(["pottery", "kids beach pottery", "Caroline painting pottery kids", "the and"]),
       st.integers(1, 6))  # fmt: skip
def test_scores_are_bm25_written_out(ops, query, k):
    """After every add and remove (slots freed and reused, the per-term arrays cached by the searches between
    them), the k best are those of the formula computed per document from the live texts: same documents, same
    order (ties by id), the same floats."""

    def check(index: LexicalIndex, live: dict) -> None:
        expected = _bm25({id: text for id, (text, _, _) in live.items()}, query)
        assert index.search(query, k, user_id="u") == expected[:k]
        assert index.search(query, 100, user_id="u") == expected

    _replay(ops, check)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), TEXTS), min_size=1, max_size=30),
    st.integers(1, 5),
)
def test_a_search_over_every_user_is_the_best_of_each_users(docs, k):
    """Each partition keeps only its k best before the merge: the merge equals the best of each user's full
    ranking (scores are per user: a user's memories are their own corpus)."""
    index = LexicalIndex()
    for n, (user, text) in enumerate(docs):
        index.add(f"d{n}", text, user)
    for query in ("pottery", "kids beach pottery"):
        merged = [pair for user in ("u1", "u2", "u3") for pair in index.search(query, 100, user_id=user)]
        merged.sort(key=lambda pair: (-pair[1], pair[0]))
        assert index.search(query, k, any_user=True) == merged[:k]
