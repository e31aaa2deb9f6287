"""Consolidation as sleep phases: NREM replay, REM prototypes with provenance, PRUNE; idempotent."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from t4dm import Memory, errors
from t4dm.memory import ConsolidationConfig
from t4dm.storage import UTC

from .conftest import bag_of_words

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _topic(word: str, n: int) -> list[str]:
    """n texts sharing the topic word three times over (they cluster), each with its own detail."""
    return [f"{word} {word} {word} note {i} {word}x{i}" for i in range(n)]


def test_nrem_replays_retrieved_and_strong_memories_and_links_co_retrieved(memory):
    a, b, c = (
        r.id for r in memory.add(["apples are red", "bananas are yellow", "cherries are dark"], user_id="u")
    )
    for _ in range(2):
        memory.search("apples bananas", user_id="u", k=2)
    report = memory.consolidate(phases=("nrem",), progress=False, now=NOW,
                                config=ConsolidationConfig(replay_tau=0.999))  # fmt: skip
    kappa = {id: memory.get(id).kappa for id in (a, b, c)}
    assert kappa[a] == pytest.approx(0.3) and kappa[b] == pytest.approx(0.3)  # two replays of 0.15
    assert kappa[c] == 0.0 and report.replayed == 2
    # the two top hits were retrieved together twice: a Hebbian edge each way, weight 2 x 0.1
    weights = {(e.src, e.dst): e.weight for e in memory.db.edges([a, b], rel="co_retrieved")}
    assert weights == pytest.approx({(a, b): 0.2, (b, a): 0.2})
    # idempotent: nothing searched since, nothing changes
    again = memory.consolidate(phases=("nrem",), progress=False, now=NOW,
                               config=ConsolidationConfig(replay_tau=0.999))  # fmt: skip
    assert again.replayed == 0 and again.co_retrieval_edges == 0
    assert memory.get(a).kappa == pytest.approx(0.3)
    memory.search("apples bananas", user_id="u", k=2)
    memory.consolidate(
        phases=("nrem",), progress=False, now=NOW, config=ConsolidationConfig(replay_tau=0.999)
    )
    weights = {(e.src, e.dst): e.weight for e in memory.db.edges([a], rel="co_retrieved")}
    assert weights == pytest.approx({(a, b): 0.3})
    # strong new memories (tau >= replay_tau, never replayed) are replayed once
    [d] = memory.add("durian smells strongly", user_id="u", surprise=5.0)
    assert d.tau > 0.99
    memory.consolidate(phases=("nrem",), progress=False, now=NOW)
    assert memory.get(d.id).kappa == pytest.approx(0.15)
    memory.consolidate(phases=("nrem",), progress=False, now=NOW)
    assert memory.get(d.id).kappa == pytest.approx(0.15)


def test_rem_builds_prototypes_with_provenance_once(memory):
    garden = [r.id for r in memory.add(_topic("garden", 8), user_id="u")]
    music = [r.id for r in memory.add(_topic("music", 8), user_id="u")]
    other = [r.id for r in memory.add(_topic("garden", 4), user_id="v")]
    report = memory.consolidate(phases=("rem",), progress=False, now=NOW,
                                config=ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5))  # fmt: skip
    assert report.prototypes >= 2 and report.members >= 12
    prototypes = [memory.get(id) for id in report.prototype_ids]
    assert all(p.kind == "prototype" and p.kappa == pytest.approx(0.85) for p in prototypes)
    by_user = {p.user_id for p in prototypes}
    assert "u" in by_user  # never a prototype mixing users: each has one user's members
    for p in prototypes:
        sources = set(memory.db.derived_from(p.id))
        assert sources and all(memory.get(s).user_id == p.user_id for s in sources)
        assert sources <= set(garden) or sources <= set(music) or sources <= set(other)
        texts = p.text.split(" | ")  # the three most central members' texts
        assert len(texts) == 3 and set(texts) <= {memory.get(s).text for s in sources}
        for s in sources:
            assert memory.get(s).kappa == pytest.approx(0.4)  # members move to the transitional band
            assert p.id in memory.db.derivatives(s)
    assert report.moves.get("episodic->transitional") == report.members
    assert report.bands_after["semantic"] == report.prototypes
    # the prototypes are searchable (dense and BM25) and idempotence: a second REM does nothing
    hits = memory.search("garden", user_id="u", k=3, policy="semantic")
    assert hits and all(h.memory.kind == "prototype" for h in hits) and hits[0].scores.get("bm25")
    assert memory.consolidate(phases=("rem",), progress=False, now=NOW).prototypes == 0
    # provenance survives reopening
    path, first = memory.path, prototypes[0]
    expected = set(memory.db.derived_from(first.id))
    memory.close()
    with Memory(path, embedder=bag_of_words) as again:
        assert expected and set(again.db.derived_from(first.id)) == expected
        assert again.get(first.id).kind == "prototype"


def test_prune_forgets_stale_weak_unretrieved_episodes(tmp_path):
    old = NOW - timedelta(days=400)
    with Memory(tmp_path / "m", embedder=bag_of_words, store_options={"clock": lambda: old}) as m:
        [weak] = m.add("a passing remark about the weather", user_id="u")
        [kept_retrieved] = m.add("the door code is 4711", user_id="u")
        [kept_seen] = m.add("the train leaves at nine", user_id="u")
    with Memory(tmp_path / "m", embedder=bag_of_words) as m:
        m.add("the train leaves at nine", user_id="u")  # seen twice: merged, kept
        m.search("door code", user_id="u", k=1)
        [fresh] = m.add("a fresh remark about lunch", user_id="u")
        config = ConsolidationConfig(prune_max_tau=1.0)  # every τ counts as weak here
        report = m.consolidate(phases=("prune",), progress=False, now=NOW, config=config)
        assert report.pruned_ids == [weak.id]
        assert m.get(weak.id) is None and m.history(weak.id) == []  # forgotten, every version
        assert all(m.get(r.id) is not None for r in (kept_retrieved, kept_seen, fresh))
        assert weak.id not in m.lexical
        assert m.consolidate(phases=("prune",), progress=False, now=NOW, config=config).pruned == 0


def test_all_phases_report_and_bad_config(memory):
    memory.add(_topic("garden", 8), user_id="u")
    report = memory.consolidate(progress=False, now=NOW)
    assert report.phases == ("nrem", "rem", "prune")
    assert sum(report.bands_after.values()) == sum(report.bands_before.values()) + report.prototypes
    assert "prototypes" in report.summary()
    for kwargs, field in [({"replay_step": 2.0}, "replay_step"), ({"rem_cluster_size": 0}, "rem_cluster_size"),
                          ({"prune_after": 3}, "prune_after")]:  # fmt: skip
        with pytest.raises(errors.InvalidInput) as info:
            ConsolidationConfig(**kwargs)
        assert info.value.field == field
    with pytest.raises(errors.InvalidTime):
        memory.consolidate(now=datetime(2026, 1, 1))
    assert np.isfinite(report.seconds)


def test_retrieval_counts_survive_a_restart(tmp_path):
    config = ConsolidationConfig(replay_tau=0.999)
    with Memory(tmp_path / "m", embedder=bag_of_words) as m:
        a, b, c = (
            r.id for r in m.add(["apples are red", "bananas are yellow", "cherries are dark"], user_id="u")
        )
        for _ in range(2):
            m.search("apples bananas", user_id="u", k=2)
    with Memory(tmp_path / "m", embedder=bag_of_words) as m:  # a new process, as far as the SDK knows
        assert m.retrievals == {a: 2, b: 2} and [set(hits) for hits in m.co_retrievals] == [{a, b}] * 2
        report = m.consolidate(phases=("nrem",), progress=False, now=NOW, config=config)
        assert report.replayed == 2 and m.get(a).kappa == pytest.approx(0.3) and m.get(c).kappa == 0.0
    with Memory(tmp_path / "m", embedder=bag_of_words) as m:  # the replayed searches are spent
        assert m.retrievals == {} and m.co_retrievals == []
        assert m.consolidate(phases=("nrem",), progress=False, now=NOW, config=config).replayed == 0


def test_state_is_journaled_every_so_many_searches_and_a_damaged_file_is_ignored(tmp_path, monkeypatch):
    """Every SAVE_EVERY searches what they added is appended to the journal (not the whole state written
    again); a crash loses only the searches since; a save starts a new generation and drops the journal; a
    torn journal record loses the searches it held, a damaged saved state its journal too."""
    import t4dm.memory.memory as module

    monkeypatch.setattr(module, "SAVE_EVERY", 3)
    m = Memory(tmp_path / "m", embedder=bag_of_words)
    [a] = m.add("apples are red", user_id="u")
    state = tmp_path / "m" / module.STATE_FILE
    journal = tmp_path / "m" / (module.STATE_FILE + module.JOURNAL_SUFFIX)
    for _ in range(2):
        m.search("apples", user_id="u", k=1)
    assert not state.exists() and not journal.exists()
    m.search("apples", user_id="u", k=1)
    first = journal.read_bytes()
    m.search("apples", user_id="u", k=1)  # the fourth is not journaled yet: a crash would lose it alone
    assert journal.read_bytes() == first and not state.exists()
    for _ in range(2):
        m.search("apples", user_id="u", k=1)
    second = journal.read_bytes()
    assert second.startswith(first) and len(second) - len(first) == len(first)  # one more record
    m.db.close()  # a crash: the SDK's close() never ran
    with Memory(tmp_path / "m", embedder=bag_of_words) as again:
        assert again.retrievals == {a.id: 6} and again.co_retrievals == [(a.id,)] * 6
        again.search("apples", user_id="u", k=1)
    with Memory(tmp_path / "m", embedder=bag_of_words) as again:  # close() journaled the seventh
        assert again.retrievals == {a.id: 7}
        again.save_state()  # a new generation, whole; the journal goes
        assert not journal.exists() and state.exists()
        saved = state.read_bytes()
        again.search("apples", user_id="u", k=1)
    journal.write_bytes(second + journal.read_bytes())  # records of the old generation: already in the state
    with Memory(tmp_path / "m", embedder=bag_of_words) as again:
        assert again.retrievals == {a.id: 8}
    journal.write_bytes(journal.read_bytes()[:-3])  # the last record torn
    with (
        pytest.warns(RuntimeWarning, match="damaged frame|cut short"),
        Memory(tmp_path / "m", embedder=bag_of_words) as again,
    ):
        assert again.retrievals == {a.id: 7}
        again.db.close()  # (no close(): the torn journal stays as it is)
    state.write_bytes(saved[:-3] + b"xyz")  # damaged: checksum mismatch
    with (
        pytest.warns(RuntimeWarning, match="checksum"),
        Memory(tmp_path / "m", embedder=bag_of_words) as again,
    ):
        assert again.retrievals == {} and again.get(a.id) is not None


def test_journaling_costs_the_new_searches_not_the_whole_state(tmp_path, monkeypatch):
    """With the state full (MAX_CO_RETRIEVALS lists), a journal record holds only the searches since the last
    one: its size does not grow with the state."""
    import t4dm.memory.memory as module

    monkeypatch.setattr(module, "SAVE_EVERY", 4)
    with Memory(tmp_path / "m", embedder=bag_of_words) as m:
        [a] = m.add("apples are red", user_id="u")
        m.co_retrievals = [(a.id,)] * module.MAX_CO_RETRIEVALS
        m.retrievals = {a.id: module.MAX_CO_RETRIEVALS}
        m.save_state()
        whole = (tmp_path / "m" / module.STATE_FILE).stat().st_size
        for _ in range(4):
            m.search("apples", user_id="u", k=1)
        record = (tmp_path / "m" / (module.STATE_FILE + module.JOURNAL_SUFFIX)).stat().st_size
        assert record < 400 < whole // 100
    with Memory(tmp_path / "m", embedder=bag_of_words) as again:
        assert again.retrievals == {a.id: module.MAX_CO_RETRIEVALS + 4}
        assert len(again.co_retrievals) == module.MAX_CO_RETRIEVALS


def test_rem_clusters_are_pure_whatever_the_members_order(tmp_path):
    """The members' order (hence k-means' starting centroids) follows their random ids; one k-means run
    merged the two topics in about one store of ten, the best of several initialisations in none of sixty
    (measured). Twelve fresh stores here: with a single run REM failed this test in four runs of six."""
    from t4dm import Memory
    from t4dm.memory.consolidation import ConsolidationConfig

    from .conftest import bag_of_words

    config = ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5)
    for trial in range(12):
        with Memory(tmp_path / f"m{trial}", embedder=bag_of_words) as memory:
            garden = {r.id for r in memory.add(_topic("garden", 8), user_id="u")}
            music = {r.id for r in memory.add(_topic("music", 8), user_id="u")}
            report = memory.consolidate(phases=("rem",), progress=False, now=NOW, config=config)
            assert report.prototypes == 2
            for p in report.prototype_ids:
                sources = set(memory.db.derived_from(p))
                assert sources <= garden or sources <= music, trial


def test_erasing_a_member_rebuilds_its_prototype_from_the_others(memory):
    """A prototype is made of its members (the centre of their vectors, the texts of the three most central):
    erasing one rebuilds it from the rest under the same id, so no read of any time finds the erased text,
    and its edges, retrieval counts and provenance go with it."""
    garden = [r.id for r in memory.add(_topic("garden", 8), user_id="u", run_id="s1", link=True)]
    memory.search("garden note 1", user_id="u")  # retrieval counts and co-retrievals name the members
    report = memory.consolidate(phases=("rem",), progress=False, now=NOW,
                                config=ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5))  # fmt: skip
    [prototype] = [memory.get(id) for id in report.prototype_ids]
    members = memory.db.derived_from(prototype.id)
    secret = prototype.text.split(" | ")[0]  # the most central member's text
    [victim] = [m for m in members if memory.get(m).text == secret]
    assert memory.db.edges(victim, rel="next") or memory.db.edges(victim, direction="in", rel="next")
    before = datetime.now(UTC)
    memory.erase(victim)
    rebuilt = memory.get(prototype.id)
    assert rebuilt.kind == "prototype" and rebuilt.kappa == pytest.approx(prototype.kappa)
    fields = memory.db.get(prototype.id).fields
    assert secret not in rebuilt.text and fields["members"] == len(members) - 1
    assert rebuilt.user_id == "u" and fields["consolidated_at"] == NOW.isoformat()
    assert set(memory.db.derived_from(prototype.id)) == set(members) - {victim}
    vectors = np.stack([memory.db.get(m).vector for m in members if m != victim])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    centre = vectors.mean(axis=0) / np.linalg.norm(vectors.mean(axis=0))
    np.testing.assert_allclose(memory.db.get(prototype.id).vector, centre, rtol=1e-5, atol=1e-6)
    assert victim not in memory.retrievals and all(victim not in hits for hits in memory.co_retrievals)
    assert not [h for h in memory.search(secret, user_id="u", k=20) if secret in h.text]
    assert memory.get(victim, as_of=before) is not None  # the past stays until the next full compaction
    memory.db.compact()
    # nothing of the victim at any time: itself, its edges, the prototype's old versions
    assert memory.get(victim, as_of=before) is None and memory.get(prototype.id, as_of=before) is None
    assert memory.history(victim) == [] and [v.text for v in memory.history(prototype.id)] == [rebuilt.text]
    assert not [
        c for c in memory.db.changes() if victim in {getattr(c.record, a, None) for a in ("id", "src", "dst")}
    ]
    assert not [c for c in memory.db.changes() if secret in str(getattr(c.record, "fields", {}).get("text"))]
    # the chain of 8 turns keeps 6 links: less the victim's one at an end, or its two in the middle and one
    # across it
    assert len(memory.db.edges(garden, rel="next")) == 6
    # erasing every member erases the prototype
    for m in set(members) - {victim}:
        memory.erase(m)
    assert memory.get(prototype.id) is None and memory.db.derived_from(prototype.id) == []


def test_a_memory_derived_from_an_erased_one_is_erased_with_it(memory):
    [a, b] = [r.id for r in memory.add(["alice was born in Lyon", "alice moved to Paris"], user_id="u")]
    [summary] = memory.add("a summary of alice's life", user_id="u", kind="fact")
    memory.db.add_provenance(summary.id, [a, b])
    assert memory.erase_all(user_id="u") == 3
    [other] = memory.add("bob likes tea", user_id="v")
    [derived] = memory.add("tea drinkers", user_id="v", kind="fact")
    memory.db.add_provenance(derived.id, [other.id])
    memory.erase(other.id)
    assert memory.get(derived.id) is None and len(memory) == 0


def test_an_erase_cut_short_while_rebuilding_leaks_nothing_and_finishes_when_called_again(
    memory, monkeypatch
):
    """The prototype is rebuilt before its member is erased: a write that fails half-way leaves no item
    holding the member's text but the member itself (still linked, so a second call finds it all)."""
    memory.add(_topic("garden", 8), user_id="u")
    report = memory.consolidate(phases=("rem",), progress=False, now=NOW,
                                config=ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5))  # fmt: skip
    [prototype] = [memory.get(id) for id in report.prototype_ids]
    secret = prototype.text.split(" | ")[0]
    [victim] = [m for m in memory.db.derived_from(prototype.id) if memory.get(m).text == secret]
    insert = memory.db.insert

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memory.db, "insert", fail)
    with pytest.raises(OSError, match="disk full"):
        memory.erase(victim)
    monkeypatch.setattr(memory.db, "insert", insert)
    holders = [item.id for item in memory.db.scan() if secret in item.fields.get("text", "")]
    assert holders == [victim]  # the prototype is erased, not yet written again; the member not yet erased
    memory.erase(victim)
    assert [item.id for item in memory.db.scan() if secret in item.fields.get("text", "")] == []
    assert memory.get(victim) is None


def test_an_erase_naming_an_unknown_id_changes_no_prototype(memory):
    memory.add(_topic("garden", 8), user_id="u")
    report = memory.consolidate(phases=("rem",), progress=False, now=NOW,
                                config=ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5))  # fmt: skip
    [prototype] = [memory.get(id) for id in report.prototype_ids]
    member = memory.db.derived_from(prototype.id)[0]
    with pytest.raises(errors.UnknownId) as info:
        memory.erase([member, "nope"])
    assert info.value.field == "ids[1]"
    assert memory.get(prototype.id) == prototype and memory.get(member) is not None
