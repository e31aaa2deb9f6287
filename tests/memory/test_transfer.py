"""Export to JSON Lines and import into a memory with another embedder: the memories, their times, kinds,
κ and fields, and the edges between them come across; a bad file writes nothing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from t4dm import Memory
from t4dm.errors import InvalidInput, UnknownId
from t4dm.memory.transfer import _decode, _encode

from .conftest import bag_of_words


def letters(texts: list[str]) -> np.ndarray:
    """Another embedder, of another dimension: letter counts."""
    out = np.zeros((len(texts), 26), np.float32)
    for i, text in enumerate(texts):
        for ch in re.sub(r"[^a-z]", "", text.lower()):
            out[i, ord(ch) - 97] += 1
        out[i, 0] += 1e-3  # never a zero vector
    return out


def _filled(path) -> Memory:
    memory = Memory(path, embedder=bag_of_words)
    memory.add("Alice moved to Paris", user_id="alice", valid_at=datetime(2023, 5, 8, tzinfo=UTC),
               metadata={"source": "chat", "tags": ["move", {"city": "Paris"}]})  # fmt: skip
    memory.add(
        [{"role": "user", "speaker": "Maya", "content": "I adopted a cat named Miso"},
         {"role": "assistant", "content": "Lovely, how old is Miso?"},
         {"role": "user", "speaker": "Maya", "content": "Miso is two"}],
        user_id="maya", run_id="s1",
    )  # fmt: skip
    [paris] = [h for h in memory.search("Paris", user_id="alice")]
    memory.update(paris.id, text="Alice moved to Lisbon")
    return memory


def test_round_trip_into_another_embedder(tmp_path):
    with _filled(tmp_path / "a") as source:
        counts = source.export_jsonl(tmp_path / "export.jsonl")
        items = {item.id: item for item in source.db.scan()}
        edges = {(e.src, e.dst, e.rel, e.weight) for e in source.db.edges(sorted(items), direction="out")}
    assert counts == {"memories": 4, "edges": 2}  # the chat's two "next" edges
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "t4dm-memory" and len(lines) == 1 + 4 + 2

    with Memory(tmp_path / "b", embedder=letters) as target:
        assert target.import_jsonl(tmp_path / "export.jsonl") == counts
        copied = {item.id: item for item in target.db.scan()}
        assert copied.keys() == items.keys()
        for id, item in items.items():
            new = copied[id]
            assert (new.kind, new.kappa, new.valid_from, new.valid_to) == (
                item.kind, item.kappa, item.valid_from, item.valid_to
            )  # fmt: skip
            assert {k: v for k, v in new.fields.items() if k != "imported_recorded_at"} == item.fields
            assert new.fields["imported_recorded_at"] == item.recorded_at.isoformat()
            np.testing.assert_allclose(new.vector, target.embedder.embed([_indexed(item)])[0], rtol=1e-6)
        assert {
            (e.src, e.dst, e.rel, e.weight) for e in target.db.edges(sorted(copied), direction="out")
        } == edges
        # the copy answers as the source did, through its own embedder and its lexical index
        [hit] = target.search("Lisbon", user_id="alice", k=1)
        assert hit.text == "Alice moved to Lisbon" and hit.memory.metadata["tags"][1] == {"city": "Paris"}
        # importing the same file again would duplicate ids: refused, nothing written
        before = len(target)
        with pytest.raises(InvalidInput) as info:
            target.import_jsonl(tmp_path / "export.jsonl")
        assert info.value.field == "path" and "already" in info.value.reason
        assert len(target) == before


def _indexed(item) -> str:
    from t4dm.memory.lexical import indexed_text

    return indexed_text(item.fields)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda lines: [*lines[:2], "{not json", *lines[2:]], "line 3"),
        (lambda lines: lines[1:], "path"),  # no header
        (lambda lines: [*lines, json.dumps({"type": "edge", "src": "x", "dst": "y", "rel": "next"})], "path"),
        (lambda lines: [*lines, lines[1]], "path"),  # an id twice
        (lambda lines: [*lines, json.dumps({"type": "blob"})], "line 8.type"),
        (
            lambda lines: [lines[0], lines[1].replace('"kappa": 0.0', '"kappa": 2.0'), *lines[2:]],
            "line 2.kappa",
        ),
    ],
)
def test_a_bad_file_names_the_problem_and_writes_nothing(tmp_path, mutate, field):
    with _filled(tmp_path / "a") as source:
        source.export_jsonl(tmp_path / "export.jsonl")
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join(mutate(lines)) + "\n")
    with Memory(tmp_path / "b", embedder=letters) as target:
        with pytest.raises(InvalidInput) as info:
            target.import_jsonl(tmp_path / "bad.jsonl")
        assert info.value.field == field
        assert len(target) == 0


def test_times_and_bytes_inside_fields_survive_the_encoding():
    value = {
        "when": datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
        "raw": b"\x00\xff",
        "list": [1, "a", {"b": None}],
    }
    assert _decode(json.loads(json.dumps(_encode(value)))) == value


def test_the_export_and_import_commands(tmp_path, monkeypatch, capsys):
    import t4dm.memory.embedder as embedder_module
    from t4dm.cli import main
    from t4dm.memory.embedder import CallableEmbedder

    stub = CallableEmbedder(bag_of_words, name="bag-of-words")
    monkeypatch.setattr(embedder_module, "default_embedder", lambda: stub)  # what --embedder omitted loads
    _filled(tmp_path / "a").close()
    assert main(["export", "--path", str(tmp_path / "a"), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(tmp_path / "a.jsonl"),
        "memories": 4,
        "edges": 2,
    }
    assert main(["import", "--path", str(tmp_path / "b"), "--file", str(tmp_path / "a.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["memories"] == 4
    assert main(["import", "--path", str(tmp_path / "b"), "--file", str(tmp_path / "a.jsonl")]) == 2
    assert "already" in capsys.readouterr().err
    assert main(["export", "--path", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "x.jsonl").exists()


def _with_history(path) -> tuple[Memory, dict[str, datetime]]:
    """A memory with an updated fact, a forgotten chat turn and a removed edge; the times between."""
    memory = _filled(path)
    times = {"after update": datetime.now(UTC)}
    turns = sorted(memory.db.scan(where={"user_id": "maya"}), key=lambda i: i.fields["text"])
    miso_is_two = next(i for i in turns if i.fields["text"].endswith("Miso is two"))
    edge = next(e for e in memory.db.edges(miso_is_two.id, direction="in"))
    memory.db.remove_edges(edge.src, edge.dst, edge.rel)
    times["before forget"] = datetime.now(UTC)
    memory.delete(miso_is_two.id)
    times["end"] = datetime.now(UTC)
    return memory, times


def _versions(memory: Memory, id: str) -> list[tuple]:
    return [
        (v.text, v.kind, v.kappa, v.valid_from, v.valid_to, v.recorded_at, v.superseded_at)
        for v in memory.history(id)
    ]


def test_an_export_with_history_gives_the_same_past(tmp_path):
    source, times = _with_history(tmp_path / "a")
    with source:
        counts = source.export_jsonl(tmp_path / "history.jsonl", history=True)
        ids = sorted({c.record.id for c in source.db.changes() if not hasattr(c.record, "src")})
        expected = {id: _versions(source, id) for id in ids}
        revised = next(id for id in ids if len(expected[id]) == 2)
        times["before update"] = expected[revised][0][5]  # the Paris version's recorded_at
        paris = [h.text for h in source.search("Paris", user_id="alice", as_of=times["before update"])]
        edges = {t: sorted((e.src, e.dst, e.rel, e.recorded_at, e.superseded_at)
                           for e in source.db.edges(ids, known_at=t)) for t in times.values()}  # fmt: skip
    # 4 first versions and one revision; the chat's two "next" edges; one turn forgotten, one edge removed
    assert counts == {
        "memories": 5, "edges": 2, "forgotten": 1, "unlinked": 1, "reweighed": 0, "scales": 0, "kappas": 0,
        "erased": 0, "erased_edges": 0,
    }  # fmt: skip
    assert paris == ["Alice moved to Paris"]
    header = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[0])
    assert header["format"] == 2 and header["history"] is True

    with Memory(tmp_path / "b", embedder=letters) as target:
        assert target.import_jsonl(tmp_path / "history.jsonl") == counts
        assert {id: _versions(target, id) for id in ids} == expected
        for t, known in edges.items():
            assert sorted((e.src, e.dst, e.rel, e.recorded_at, e.superseded_at)
                          for e in target.db.edges(ids, known_at=t)) == known  # fmt: skip
        [forgotten] = [id for id in ids if expected[id][-1][6] is not None]
        assert target.get(forgotten) is None
        assert target.get(forgotten, as_of=times["before forget"]).text == "Miso is two"
        # each version embedded by the new embedder: the past is searchable, and the present through the
        # lexical index too (the forgotten turn is not in it)
        old = target.db.get(revised, as_of=times["before update"])
        np.testing.assert_allclose(old.vector, target.embedder.embed(["Alice moved to Paris"])[0], rtol=1e-6)
        assert [
            h.text for h in target.search("Paris", user_id="alice", as_of=times["before update"])
        ] == paris
        [hit] = target.search("Lisbon", user_id="alice", k=1)
        assert hit.text == "Alice moved to Lisbon"
        assert forgotten not in target.lexical and revised in target.lexical
        assert all(h.id != forgotten for h in target.search("Miso is two", user_id="maya", k=5))


def test_a_history_import_needs_a_store_whose_past_ends_before_it(tmp_path):
    source, _ = _with_history(tmp_path / "a")
    with source:
        source.export_jsonl(tmp_path / "history.jsonl", history=True)
    with Memory(tmp_path / "b", embedder=letters) as target:
        target.add("written after the source's history", user_id="bob")
        with pytest.raises(InvalidInput) as info:
            target.import_jsonl(tmp_path / "history.jsonl")
        assert (
            info.value.field == "line 2.recorded_at"
            and "later than this store's last write" in info.value.reason
        )
        assert len(target) == 1 and len(list(target.db.changes())) == 1


def _negative_scale(lines: list[str]) -> list[str]:
    last = datetime.fromisoformat(json.loads(lines[-1])["recorded_at"])
    scale = {
        "type": "scale",
        "factor": -1.0,
        "rel": None,
        "recorded_at": (last + timedelta(microseconds=1)).isoformat(),
    }
    return [*lines, json.dumps(scale)]


def _kappa_line(lines: list[str], id: str, kappa: object) -> str:
    last = datetime.fromisoformat(json.loads(lines[-1])["recorded_at"])
    return json.dumps(
        {
            "type": "kappa",
            "id": id,
            "kappa": kappa,
            "recorded_at": (last + timedelta(microseconds=1)).isoformat(),
        }
    )


def _swap(lines: list[str], a: int, b: int) -> list[str]:
    lines = list(lines)
    lines[a], lines[b] = lines[b], lines[a]
    return lines


@pytest.mark.parametrize(
    ("mutate", "error", "field"),
    [
        (lambda lines: [lines[0], lines[1].replace('"recorded_at"', '"recorded"'), *lines[2:]], InvalidInput,
         "line 2.recorded_at"),
        (lambda lines: _swap(lines, 1, 7), InvalidInput, "line 3.recorded_at"),  # the revision first: times fall
        (lambda lines: [*lines, lines[-1]], UnknownId, "line 11.id"),  # the turn forgotten twice
        (lambda lines: [*lines, json.dumps({"type": "forget", "id": 7, "recorded_at": None})], InvalidInput,
         "line 11.id"),
        (lambda lines: [*lines, json.dumps({"type": "blob"})], InvalidInput, "line 11.type"),
        (lambda lines: [*lines, json.dumps({"type": "erase", "id": ["x"], "recorded_at": None})], InvalidInput,
         "line 11.id"),
        (lambda lines: [*lines, json.dumps({"type": "scale", "factor": "half", "rel": None, "recorded_at": None})],
         InvalidInput, "line 11.factor"),
        (_negative_scale, InvalidInput, "line 11.factor"),
        (lambda lines: [*lines, _kappa_line(lines, json.loads(lines[-1])["id"], 0.5)], UnknownId, "line 11.id"),
        (lambda lines: [*lines, _kappa_line(lines, json.loads(lines[1])["id"], 1.5)], InvalidInput, "line 11.kappa"),
        (lambda lines: [*lines, _kappa_line(lines, json.loads(lines[1])["id"], "high")], InvalidInput,
         "line 11.kappa"),
    ],
)  # fmt: skip
def test_a_bad_history_names_the_line_and_writes_nothing(tmp_path, mutate, error, field):
    source, _ = _with_history(tmp_path / "a")
    with source:
        source.export_jsonl(tmp_path / "history.jsonl", history=True)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "t4dm-memory", "memory", "memory", "memory", "memory", "edge", "edge", "memory", "unlink", "forget",
    ]  # fmt: skip
    (tmp_path / "bad.jsonl").write_text("\n".join(mutate(lines)) + "\n")
    with Memory(tmp_path / "b", embedder=letters) as target:
        with pytest.raises(error) as info:
            target.import_jsonl(tmp_path / "bad.jsonl")
        assert info.value.field == field
        assert len(target) == 0 and list(target.db.changes()) == []


def test_an_export_with_history_carries_edge_weights_and_scales(tmp_path):
    # weights are not versions: weight updates and scales travel as changes of their own, so the import
    # ends with the weights the source has
    source = _filled(tmp_path / "a")
    with source:
        edges = source.db.edges([i.id for i in source.db.scan()])
        first, second = edges[0], edges[1]
        source.db.update_edge_weight(first.src, first.dst, first.rel, delta=0.5)
        source.db.batch_scale_weights(0.5)
        source.db.update_edge_weight(second.src, second.dst, second.rel, weight=3.0)
        want = {(e.src, e.dst, e.rel): e.weight for e in source.db.edges([i.id for i in source.db.scan()])}
        counts = source.export_jsonl(tmp_path / "history.jsonl", history=True)
    assert (counts["reweighed"], counts["scales"]) == (2, 1)
    types = [json.loads(line)["type"] for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert types[-3:] == ["reweigh", "scale", "reweigh"]
    with Memory(tmp_path / "b", embedder=letters) as target:
        assert target.import_jsonl(tmp_path / "history.jsonl") == counts
        got = {(e.src, e.dst, e.rel): e.weight for e in target.db.edges([i.id for i in target.db.scan()])}
        assert got == pytest.approx(want) and len(want) == 2
        assert want[(first.src, first.dst, first.rel)] == pytest.approx((first.weight + 0.5) * 0.5)


def test_the_export_command_with_history(tmp_path, monkeypatch, capsys):
    import t4dm.memory.embedder as embedder_module
    from t4dm.cli import main
    from t4dm.memory.embedder import CallableEmbedder

    stub = CallableEmbedder(bag_of_words, name="bag-of-words")
    monkeypatch.setattr(embedder_module, "default_embedder", lambda: stub)
    _with_history(tmp_path / "a")[0].close()
    out = str(tmp_path / "a.jsonl")
    assert main(["export", "--path", str(tmp_path / "a"), "--out", out, "--history"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": out, "memories": 5, "edges": 2, "forgotten": 1, "unlinked": 1, "reweighed": 0, "scales": 0,
        "kappas": 0, "erased": 0, "erased_edges": 0,
    }  # fmt: skip
    assert main(["import", "--path", str(tmp_path / "b"), "--file", out]) == 0
    assert json.loads(capsys.readouterr().out)["forgotten"] == 1
    with (
        Memory(tmp_path / "b", embedder=bag_of_words) as copy,
        Memory(tmp_path / "a", embedder=bag_of_words) as a,
    ):
        assert [c.record for c in copy.db.changes()] != [] and len(copy) == len(a) == 3
        assert [(c.op, c.recorded_at) for c in copy.db.changes()] == [
            (c.op, c.recorded_at) for c in a.db.changes()
        ]


def test_an_export_with_history_after_consolidation_imports(tmp_path):
    """REM's prototypes and their provenance are two transactions, so a consolidated memory's history
    exports and imports (before, the import refused the prototypes' transaction: two sorts in one); the κ
    consolidation set in place comes across as κ changes."""
    from t4dm.memory import ConsolidationConfig

    source = Memory(tmp_path / "a", embedder=bag_of_words)
    with source:
        source.add([f"garden garden garden note {i} gardenx{i}" for i in range(8)], user_id="u")
        report = source.consolidate(phases=("rem",), progress=False,
                                    config=ConsolidationConfig(rem_cluster_size=8, rem_min_similarity=0.5))  # fmt: skip
        assert report.prototypes == 1
        [proto] = report.prototype_ids
        sources = set(source.db.derived_from(proto))
        source.db.update_kappa(proto, delta=0.1)  # and one κ set by hand: UPDATE_KAPPA
        counts = source.export_jsonl(tmp_path / "history.jsonl", history=True)
        expected = {m.id: _versions(source, m.id) for m in source.db.scan()}
    # REM moved its members to κ 0.4 in place: κ lines, not versions
    assert counts["memories"] == 9 and counts["edges"] == len(sources) >= 2
    assert counts["kappas"] == len(sources) + 1
    assert {expected[s][-1][2] for s in sources} == {0.4} and expected[proto][-1][2] == pytest.approx(0.95)
    with Memory(tmp_path / "b", embedder=letters) as target:
        assert target.import_jsonl(tmp_path / "history.jsonl") == counts
        assert {id: _versions(target, id) for id in expected} == expected
        assert set(target.db.derived_from(proto)) == sources and target.get(proto).kind == "prototype"


def test_an_erased_memory_travels_as_an_erase_line(tmp_path):
    """Memory.erase: gone at once, its past gone after the next full compaction; a history export made
    before that compaction carries its versions and an erase line, and the import erases it too. Its edges
    (here one live, one removed before) travel as erase lines naming their ends."""
    source = _filled(tmp_path / "a")
    with source:
        [paris] = source.search("Paris", user_id="alice", k=1)
        [reply] = source.search("how old is Miso", user_id="maya", k=1)
        [(_, first)] = source.db.neighbours(reply.id, direction="in", rel="next")
        before = paris.memory.recorded_at
        source.db.remove_edges(first, reply.id, "next")
        source.erase(paris.id)
        source.erase(reply.id)
        assert source.get(paris.id) is None and paris.id not in source.lexical
        assert source.get(paris.id, as_of=before) is not None  # until the next full compaction
        counts = source.export_jsonl(tmp_path / "history.jsonl", history=True)
        source.db.compact()
        assert source.history(paris.id) == [] and source.get(paris.id, as_of=before) is None
    assert counts["erased"] == 2 and counts["erased_edges"] == 2
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines[-4:]] == ["erase"] * 4
    assert {line.get("src") for line in lines[-4:]} == {None, first, reply.id}
    with Memory(tmp_path / "b", embedder=letters) as target:
        assert target.import_jsonl(tmp_path / "history.jsonl") == counts
        assert target.get(paris.id) is None and paris.id not in target.lexical
        assert target.db.edges(reply.id) == [] and target.db.edges(reply.id, known_at=before) != []
        target.db.compact()
        assert target.history(paris.id) == [] and target.db.edges([reply.id, first], known_at=before) == []
        assert not target.search("Paris", user_id="alice")


def test_the_erase_command(tmp_path, monkeypatch, capsys):
    """``t4dm erase``: named memories or a user's, then a full compaction, so their past is gone too; bad
    requests exit 2 and erase nothing."""
    import t4dm.memory.embedder as embedder_module
    from t4dm.cli import main
    from t4dm.memory.embedder import CallableEmbedder

    monkeypatch.setattr(
        embedder_module, "default_embedder", lambda: CallableEmbedder(bag_of_words, name="bow")
    )
    with _filled(tmp_path / "a") as memory:
        [paris] = memory.search("Lisbon", user_id="alice", k=1)
        maya = [item.id for item in memory.db.scan(where={"user_id": "maya"})]
    path = str(tmp_path / "a")
    for bad in (["--id", "nope"], ["--id", maya[0], "--user-id", "maya"], []):
        assert main(["erase", "--path", path, *bad]) == 2
        assert capsys.readouterr().err.startswith("t4dm erase:")
    assert main(["erase", "--path", str(tmp_path / "nowhere"), "--user-id", "x"]) == 2
    assert not (tmp_path / "nowhere").exists()
    assert main(["erase", "--path", path, "--id", paris.id]) == 0
    assert json.loads(capsys.readouterr().out) == {"erased": 1, "compacted": True}
    assert main(["erase", "--path", path, "--user-id", "maya", "--no-compact"]) == 0
    assert json.loads(capsys.readouterr().out) == {"erased": 3, "compacted": False}
    with Memory(path, embedder=bag_of_words) as memory:
        assert memory.history(paris.id) == [] and len(memory) == 0
        assert len(memory.history(maya[0])) == 1  # not compacted: the past stays until the next compaction
        memory.db.compact()
        assert memory.history(maya[0]) == [] and memory.db.edges(maya) == []
