"""Read-only opens: a reader beside the writer (which holds the lock), as of its open until it refreshes,
writing nothing under the store's folder, consistent while another process writes, flushes and compacts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, Edge, Item

from .conftest import DIM, vec


def _files(path) -> dict[str, tuple[int, str]]:
    """Every file under ``path``: its size and a hash of its bytes (the LOCK file's pid aside)."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = (
                    os.path.getsize(full),
                    hashlib.sha256(f.read()).hexdigest(),
                )
    return out


def _writes(db: T4DX, a: str, b: str, path) -> list:
    """Every public write of a store, as calls."""
    return [
        lambda: db.insert(Item(vector=vec(9))),
        lambda: db.insert_batch(np.ones((2, DIM), np.float32)),
        lambda: db.update_fields(a, {"x": 1}),
        lambda: db.update_kappa(a, kappa=0.5),
        lambda: db.update_kappas([(a, 0.5)]),
        lambda: db.delete(a),
        lambda: db.erase(a),
        lambda: db.replay([]),
        db.flush,
        db.compact,
        lambda: db.add_edges(Edge(a, b)),
        lambda: db.add_edges_batch([a], [b]),
        lambda: db.remove_edges(a, b, "related"),
        lambda: db.update_edge_weight(a, b, delta=0.1),
        lambda: db.update_edge_weights([(a, b, "related", 0.1)]),
        lambda: db.batch_scale_weights(0.5),
        lambda: db.add_provenance(a, [b]),
        lambda: db.backup(os.path.join(path, "..", "copy")),
    ]


def test_a_reader_beside_the_writer_reads_as_of_its_open_until_it_refreshes(tmp_path, monkeypatch):
    loads = []
    original = T4DX._init
    monkeypatch.setattr(
        T4DX, "_init", lambda self, **kw: (loads.append(kw["read_only"]), original(self, **kw))[1]
    )
    path = str(tmp_path / "db")
    writer = T4DX.open(path, dim=DIM, durability="batch")
    a, b = writer.insert(
        [Item(vector=vec(0), fields={"text": "a"}), Item(vector=vec(1), fields={"text": "b"})]
    )
    writer.add_edges(Edge(a, b, rel="next"))
    writer.flush()
    c = writer.insert(Item(vector=vec(2), fields={"text": "c"}))[0]  # in the writer's log only
    with pytest.raises(errors.StoreLocked):
        T4DX.open(path)
    reader = T4DX.open(path, read_only=True)
    loads.clear()
    assert reader.read_only and not writer.read_only and reader.stats()["read_only"] is True
    assert reader.count() == 3 and reader.get(c).fields == {"text": "c"}
    assert [e.dst for e in reader.edges(a, rel="next")] == [b] and reader.search(vec(1), k=1)[0].id == b
    assert reader.refresh() is False  # nothing new: nothing loaded
    assert (
        reader.stats()["last_recorded"] == writer.stats()["last_recorded"] == writer.last_recorded.isoformat()
    )

    opened = writer.get(a).recorded_at
    writer.update_fields(a, {"text": "a, revised"})
    d = writer.insert(Item(vector=vec(3), fields={"text": "d"}))[0]
    writer.batch_scale_weights(0.5)
    assert reader.get(a).fields == {"text": "a"} and reader.get(d) is None  # as of its open
    assert reader.last_recorded < writer.last_recorded  # its lag
    snapshot = reader.search(vec(0), k=4)
    # only the log grew: its new records are applied, the store is not loaded again
    assert reader.refresh() is True and loads == []
    assert reader.get(a).fields == {"text": "a, revised"} and reader.get(d).fields == {"text": "d"}
    assert reader.get(a, as_of=opened).fields == {"text": "a"} and reader.count() == 4
    assert [(c.seq, c.op) for c in reader.changes()] == [(c.seq, c.op) for c in writer.changes()]
    writer.delete(d)
    assert reader.refresh() and reader.get(d) is None and loads == []
    writer.insert(Item(vector=vec(3), id=d, fields={"text": "d again"}))
    writer.flush()
    writer.compact()  # the segments the reader maps are unlinked
    assert reader.get(d) is None and [h.id for h in reader.search(vec(0), k=4)] == [h.id for h in snapshot]
    assert reader.refresh() is True and loads == [True]  # a new manifest: loaded again
    assert reader.get(a).fields == {"text": "a, revised"} and reader.get(d).fields == {"text": "d again"}
    assert reader.get(a, as_of=opened).fields == {"text": "a"} and len(reader.history(a)) == 2
    assert reader.edges(a, rel="next")[0].weight == pytest.approx(0.5)
    assert [(c.seq, c.op) for c in reader.changes()] == [(c.seq, c.op) for c in writer.changes()]
    assert reader.count() == writer.count() == 4
    writer.close()
    # a writer may open while a reader is open: the reader takes no lock
    with T4DX.open(path) as again:
        again.insert(Item(vector=vec(4), fields={"text": "e"}))
    assert reader.refresh() and reader.count() == 5
    reader.close()
    with pytest.raises(errors.StoreClosed):
        reader.refresh()


def test_a_reader_writes_nothing_and_refuses_every_write(tmp_path):
    path = str(tmp_path / "db")
    with T4DX.open(path, dim=DIM) as writer:
        a, b = writer.insert([Item(vector=vec(0)), Item(vector=vec(1))])
        writer.flush()
        writer.insert(Item(vector=vec(2)))
    before = _files(path)
    with T4DX.open(path, read_only=True) as reader:
        for write in _writes(reader, a, b, path):
            with pytest.raises(errors.ReadOnlyStore, match="read-only") as raised:
                write()
            assert raised.value.path == path
        assert reader.count() == 3 and reader.search(vec(1), k=1)[0].id == b
        reader.refresh()
        assert reader.wait_indexed(0.1)
    assert _files(path) == before and not os.path.exists(os.path.join(path, "..", "copy"))
    reader.close()  # twice is fine
    with pytest.raises(errors.StoreClosed):
        reader.insert(Item(vector=vec(9)))


def test_a_reader_reads_up_to_a_record_being_written_and_leaves_it(tmp_path):
    """The last log's tail may be a record the writer is writing: a reader stops before it, without the
    torn-tail warning or truncation a recovering writer would do."""
    path = str(tmp_path / "db")
    with T4DX.open(path, dim=DIM, durability="sync") as writer:
        ids = writer.insert([Item(vector=vec(i)) for i in range(3)])
    [wal] = [os.path.join(path, "wal", n) for n in os.listdir(os.path.join(path, "wal"))]
    with open(wal, "ab") as f:
        f.write(b"\x52\x58\x4a\x7d" + b"\x40\x00\x00\x00" + b"half a record")
    before = _files(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with T4DX.open(path, read_only=True) as reader:
            assert reader.count() == 3 and reader.get(ids[2]) is not None
    assert _files(path) == before
    with pytest.warns(UserWarning, match="torn"), T4DX.open(path) as writer:  # a writer repairs it
        assert writer.count() == 3


def test_read_only_needs_a_store(tmp_path):
    with pytest.raises(errors.NotAStore, match="read-only"):
        T4DX.open(tmp_path / "nothing", read_only=True)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(errors.NotAStore):
        T4DX.open(tmp_path / "empty", dim=DIM, read_only=True)
    assert os.listdir(tmp_path / "empty") == []
    T4DX.open(tmp_path / "db", dim=DIM).close()
    with pytest.raises(errors.DimensionMismatch):
        T4DX.open(tmp_path / "db", dim=DIM + 1, read_only=True)
    with pytest.raises(errors.InvalidInput, match="read_only"):
        T4DX.open(tmp_path / "db", read_only="yes")  # type: ignore[arg-type]


_WRITER = textwrap.dedent(
    """
    import sys, os, numpy as np
    from t4dm.storage import T4DX, Item
    path, stop = sys.argv[1], sys.argv[2]
    # a small memtable and few segments: flushes and merges all the time
    with T4DX.open(path, dim=8, durability="batch", memtable_bytes=4096, max_segments=3) as db:
        n = 0
        while not os.path.exists(stop) or n < 200:
            db.insert(Item(vector=np.full(8, n + 1.0, np.float32), id=f"item-{n}", fields={"n": n}))
            if n % 7 == 3:
                db.update_fields(f"item-{n - 1}", {"n": n - 1, "revised": True})
            if n % 50 == 49:
                db.compact()
            n += 1
        print(n)
    """
)


def test_a_reader_stays_consistent_while_another_process_writes_flushes_and_compacts(tmp_path):
    """Each refresh sees a prefix of the writer's transactions: items 0..m-1 with no gap, m never
    shrinking, the revisions of those before m-1 there, whatever flushes and compactions ran meanwhile."""
    path, stop = str(tmp_path / "db"), str(tmp_path / "stop")
    T4DX.open(path, dim=DIM).close()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, path, stop], stdout=subprocess.PIPE, text=True)
    failures: list[BaseException] = []
    stopping = threading.Event()

    def search_meanwhile() -> None:  # reads in another thread run across the refreshes' swaps
        try:
            while not stopping.is_set():
                for hit in reader.search(np.full(DIM, 1.0, np.float32), k=3):
                    assert hit.item.fields["n"] >= 0
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    try:
        reader = T4DX.open(path, read_only=True)
        searcher = threading.Thread(target=search_meanwhile)
        searcher.start()
        seen, refreshes, deadline = 0, 0, time.monotonic() + 6.0
        while time.monotonic() < deadline and writer.poll() is None:
            refreshes += reader.refresh()
            items = {item.id: item.fields for item in reader.scan()}
            numbers = sorted(fields["n"] for fields in items.values())
            assert numbers == list(range(len(numbers))), "a gap: not a prefix of the writer's transactions"
            assert len(numbers) >= seen
            seen = len(numbers)
            revised = {int(id.split("-")[1]) for id, fields in items.items() if fields.get("revised")}
            # a revision follows its item's successor's insert: each is there once the next insert is
            assert {n - 1 for n in range(3, seen - 1, 7)} <= revised <= {n - 1 for n in range(3, seen, 7)}
            if seen:
                assert reader.search(np.full(DIM, 1.0, np.float32), k=1)[0].id in items
        stopping.set()
        searcher.join()
        assert not failures, failures
        open(stop, "w").close()
        written = int(writer.communicate(timeout=60)[0])
        reader.refresh()
        assert reader.count() == written and refreshes >= 3
        reader.close()
    finally:
        stopping.set()
        open(stop, "w").close()
        if writer.poll() is None:
            writer.kill()


def test_a_refresh_loads_the_hnsw_indexes_the_writer_has_built_since(tmp_path):
    """A segment whose index the writer had not built when the reader loaded it is searched exactly; the
    next refresh picks the index up, though nothing else changed."""
    path = str(tmp_path / "db")
    with T4DX.open(path, dim=DIM, index_build="sync", hnsw={"min_rows": 16}) as writer:
        writer.insert_batch(np.stack([vec(i) for i in range(64)]))
        writer.flush()
        [segment] = writer._segments
        assert segment.index is not None
        os.rename(segment.index_path, segment.index_path + ".later")  # as if not built yet
        reader = T4DX.open(path, read_only=True)
        assert reader._segments[0].index is None
        exact = [h.id for h in reader.search(vec(5), k=5)]
        os.rename(segment.index_path + ".later", segment.index_path)  # built now
        assert reader.refresh() is False and reader._segments[0].index is not None
        assert [h.id for h in reader.search(vec(5), k=5)] == exact
        reader.close()
