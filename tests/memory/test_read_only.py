"""A memory opened read-only beside the process that writes it: reads as of its open until it refreshes,
refuses every write, writes nothing under the folder; ``t4dm export`` and ``t4dm info`` read beside a
writer."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from t4dm import Memory, errors

from .conftest import bag_of_words


def _files(path) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_a_read_only_memory_reads_beside_the_writer_until_it_refreshes(tmp_path):
    path = tmp_path / "m"
    with Memory(path, embedder=bag_of_words) as writer:
        writer.add(["Maya moved to Porto", "Maya likes green tea"], user_id="maya")
        with pytest.raises(errors.StoreLocked):
            Memory(path, embedder=bag_of_words)
        with Memory(path, embedder=bag_of_words, read_only=True) as reader:
            assert reader.read_only and not writer.read_only and len(reader) == 2
            assert reader.search("Porto", user_id="maya")[0].text == "Maya moved to Porto"
            [cat] = writer.add(["Maya adopted a cat named Miso"], user_id="maya")
            assert all(
                "Miso" not in h.text for h in reader.search("cat Miso", user_id="maya")
            )  # as of its open
            assert reader.get(cat.id) is None
            assert reader.refresh() is True and reader.refresh() is False
            assert reader.search("cat named Miso", user_id="maya")[0].id == cat.id  # BM25 and dense both
            assert reader.search("cat named Miso", user_id="maya")[0].scores["bm25_rank"] == 1
            writer.delete(cat.id)
            assert reader.refresh() and reader.get(cat.id) is None and reader.history(cat.id)


def test_a_read_only_memory_refuses_every_write_and_writes_nothing(tmp_path):
    path = tmp_path / "m"
    with Memory(path, embedder=bag_of_words) as writer:
        [porto] = writer.add(["Maya moved to Porto"], user_id="maya")
        writer.export_jsonl(tmp_path / "export.jsonl")
        writer.search("Porto", user_id="maya")  # the writer's retrieval state, journaled at close
    before = _files(path)
    with Memory(path, embedder=bag_of_words, read_only=True) as reader:
        writes = {
            "add": lambda: reader.add("Maya likes tea", user_id="maya"),
            "update": lambda: reader.update(porto.id, text="Maya moved to Braga"),
            "delete": lambda: reader.delete(porto.id),
            "erase": lambda: reader.erase(porto.id),
            "erase_all": lambda: reader.erase_all(user_id="maya"),
            "delete_all": lambda: reader.delete_all(user_id="maya"),
            "consolidate": lambda: reader.consolidate(progress=False),
            "import_jsonl": lambda: reader.import_jsonl(tmp_path / "export.jsonl"),
            "save_state": reader.save_state,
        }
        for operation, write in writes.items():
            with pytest.raises(errors.ReadOnlyStore) as raised:
                write()
            assert raised.value.operation == operation
        for _ in range(300):  # more searches than a writer saves its retrieval counts after
            assert reader.search("Porto", user_id="maya")[0].id == porto.id
        assert reader.retrievals[porto.id] == 300  # its own searches' only
    assert _files(path) == before
    with Memory(path, embedder=bag_of_words) as writer:
        assert writer.retrievals == {porto.id: 1} and len(writer) == 1


def test_a_read_only_memory_needs_one_there(tmp_path):
    with pytest.raises(errors.NotAStore, match="read-only"):
        Memory(tmp_path / "nothing", embedder=bag_of_words, read_only=True)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(errors.InvalidInput, match="read_only"):
        Memory(tmp_path / "m", embedder=bag_of_words, read_only="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()


def test_export_and_info_read_beside_a_running_writer(tmp_path, monkeypatch, capsys):
    import t4dm.memory.embedder as embedder_module
    from t4dm.cli import main
    from t4dm.memory.embedder import CallableEmbedder

    monkeypatch.setattr(
        embedder_module, "default_embedder", lambda: CallableEmbedder(bag_of_words, name="bow")
    )
    path = str(tmp_path / "m")
    with Memory(path, embedder=bag_of_words) as writer:
        writer.add(["Maya moved to Porto", "Maya likes green tea"], user_id="maya")
        assert main(["export", "--path", path, "--out", str(tmp_path / "out.jsonl")]) == 0
        assert json.loads(capsys.readouterr().out)["memories"] == 2
        assert main(["info", path]) == 0
        assert json.loads(capsys.readouterr().out)["live_items"] == 2
        writer.add(["Maya adopted a cat"], user_id="maya")  # the writer goes on
    with Memory(path, embedder=bag_of_words, read_only=True) as reader:
        assert len(reader) == 3


def _lexical_state(memory: Memory) -> tuple:
    index = memory.lexical
    queries = ("Porto", "tea", "cat Miso", "Maya moved", "garden roses", "Lisbon")
    return dict(index._where), {q: index.search(q, 10, user_id="maya") for q in queries}


def test_a_refresh_brings_the_lexical_index_up_to_date_from_the_changes(tmp_path):
    """The reader's BM25 index follows the writer's adds, updates, deletions and erasures through the change
    feed (not rebuilt), and is built anew after a consolidation's full compaction folded changes away: either
    way it equals an index built from the store."""
    path = tmp_path / "m"
    with Memory(path, embedder=bag_of_words) as writer:
        [porto, tea] = writer.add(["Maya moved to Porto", "Maya likes green tea"], user_id="maya")
        with Memory(path, embedder=bag_of_words, read_only=True) as reader:
            assert reader.search("tea", user_id="maya")[0].id == tea.id  # its index is built
            writer.add(
                [{"role": "user", "speaker": "Maya", "content": "I adopted a cat named Miso"},
                 {"role": "user", "speaker": "Maya", "content": "My garden has roses"}],
                user_id="maya", run_id="s1",
            )  # fmt: skip
            writer.update(porto.id, text="Maya moved to Lisbon")
            writer.delete(tea.id)
            [gone] = writer.add(["Maya hates Mondays"], user_id="maya")
            writer.erase(gone.id)
            index = reader._lexical
            assert reader.refresh() and reader._lexical is index  # followed, not dropped
            with Memory(path, embedder=bag_of_words, read_only=True) as fresh:
                assert _lexical_state(reader) == _lexical_state(fresh)
            assert reader.search("Lisbon", user_id="maya")[0].id == porto.id
            assert all(h.id not in (tea.id, gone.id) for h in reader.search("tea Mondays", user_id="maya"))
            writer.consolidate(progress=False)  # folds only what the reader had seen: followed again
            [book] = writer.add(["Maya reads about Porto"], user_id="maya")
            assert reader.refresh() and reader._lexical is index
            with Memory(path, embedder=bag_of_words, read_only=True) as fresh:
                assert _lexical_state(reader) == _lexical_state(fresh)
            writer.erase(book.id)
            writer.db.compact()  # drops a change the reader has not seen: built anew
            assert reader.refresh() and reader._lexical is None
            with Memory(path, embedder=bag_of_words, read_only=True) as fresh:
                assert _lexical_state(reader) == _lexical_state(fresh)


def test_the_search_command_reads_beside_a_writer(tmp_path, monkeypatch, capsys):
    """``t4dm search``: the hits as JSON lines, read-only (a writer holds the memory meanwhile), scoped and
    in time; bad requests exit 2 and name what is wrong."""
    import t4dm.memory.embedder as embedder_module
    from t4dm.cli import main
    from t4dm.memory.embedder import CallableEmbedder

    monkeypatch.setattr(
        embedder_module, "default_embedder", lambda: CallableEmbedder(bag_of_words, name="bow")
    )
    path = str(tmp_path / "m")
    with Memory(path, embedder=bag_of_words) as writer:
        [paris] = writer.add("Alice moved to Paris", user_id="alice")
        writer.add("Bob moved to Paris too", user_id="bob")
        before = writer.get(paris.id).recorded_at
        writer.update(paris.id, text="Alice moved to Lisbon")
        assert main(["search", "Alice moved", "--path", path, "--user-id", "alice"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(h["id"], h["text"]) for h in lines] == [(paris.id, "Alice moved to Lisbon")]
        assert (
            main(["search", "Paris", "--path", path, "--user-id", "alice", "--as-of", before.isoformat()])
            == 0
        )
        assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [
            "Alice moved to Paris"
        ]
        for bad, says in (
            (["--user-id", "alice", "--as-of", "yesterday"], "ISO 8601"),
            ([], "user_id"),
            (["--user-id", "alice", "-k", "0"], "k"),
        ):
            assert main(["search", "Paris", "--path", path, *bad]) == 2
            assert says in capsys.readouterr().err
    assert main(["search", "Paris", "--path", str(tmp_path / "nowhere"), "--user-id", "alice"]) == 2
    assert "holds no T4DX store" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
