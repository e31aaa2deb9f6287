"""Reader threads scan and get while the writer inserts, updates, deletes, flushes and compacts:
no errors, no half-written state, and every committed write visible."""

from __future__ import annotations

import random
import threading
import time

import numpy as np

from t4dm.storage import T4DX, Item

DIM = 8


def _check(item: Item) -> None:
    """Every item carries its own checksum: fields and vector must come from the same write."""
    f = item.fields
    assert f["check"] == f["batch"] * 1000 + f["i"] + f["version"], item
    assert (item.vector == f["batch"] + f["version"]).all(), item


def test_readers_see_consistent_state_while_writer_works(tmp_path):
    db = T4DX.open(str(tmp_path / "s"), dim=DIM, durability="none", memtable_bytes=64 << 10, max_segments=3)
    committed: list[str] = []  # ids the writer acknowledged; never deleted
    failures: list[BaseException] = []
    stop = threading.Event()
    stats = {"writes": 0, "flushes": 0, "compactions": 0, "gets": 0, "scans": 0}

    def writer() -> None:
        rng = random.Random(1)
        doomed: list[str] = []
        batch = 0
        try:
            while batch < 150:  # a fixed amount of work, however the threads are scheduled
                batch += 1
                n = rng.randint(1, 40)
                items = [
                    Item(
                        vector=np.full(DIM, batch, dtype=np.float32),
                        fields={"batch": batch, "i": i, "version": 0, "check": batch * 1000 + i},
                    )
                    for i in range(n)
                ]
                ids = db.insert(items)
                committed.extend(ids[: n // 2])
                doomed.extend(ids[n // 2 :])
                if committed and rng.random() < 0.5:
                    id = rng.choice(committed)
                    item = db.get(id)
                    version = item.fields["version"] + 1
                    base = item.fields["batch"]
                    db.update_fields(
                        id,
                        {"version": version, "check": base * 1000 + item.fields["i"] + version},
                        vector=np.full(DIM, base + version, dtype=np.float32),
                    )
                if doomed and rng.random() < 0.5:
                    db.delete(doomed.pop(rng.randrange(len(doomed))))
                stats["writes"] += 1
                if rng.random() < 0.1:
                    db.flush()
                    stats["flushes"] += 1
                if rng.random() < 0.03:
                    db.compact()
                    stats["compactions"] += 1
        except BaseException as exc:
            failures.append(exc)

    def getter(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                known = list(committed)
                for id in rng.sample(known, min(50, len(known))):
                    item = db.get(id)
                    assert item is not None, f"committed id {id} not found"
                    _check(item)
                    stats["gets"] += 1
                time.sleep(0.001)  # readers that do nothing else would starve the writer of the GIL
        except BaseException as exc:
            failures.append(exc)

    def scanner() -> None:
        try:
            while not stop.is_set():
                known = set(committed)
                seen = []
                for item in db.scan():
                    _check(item)
                    seen.append(item.id)
                assert len(seen) == len(set(seen)), "an item appeared twice in one scan"
                missing = known - set(seen)
                assert not missing, f"{len(missing)} committed items missing from a scan"
                stats["scans"] += 1
                time.sleep(0.001)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=getter, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=scanner) for _ in range(2)]
    for t in threads:
        t.start()
    threads[0].join(timeout=120)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    db.close()
    assert not failures, failures[0]
    print(stats)
    assert (
        stats["flushes"] >= 3 and stats["compactions"] >= 1 and stats["scans"] >= 5 and stats["gets"] > 100
    ), stats
    assert stats["writes"] == 150, stats


def test_a_scan_sees_the_snapshot_it_started_with(tmp_path):
    """Writes, flushes and compactions during a scan change nothing in what that scan yields."""
    with T4DX.open(str(tmp_path / "s"), dim=DIM) as db:
        old = [f"old{i}" for i in range(10)]
        new = [f"new{i}" for i in range(10)]
        db.insert(
            [Item(vector=np.full(DIM, i, np.float32), id=id, fields={"v": 0}) for i, id in enumerate(old)]
        )
        db.flush()
        db.insert(
            [Item(vector=np.full(DIM, i, np.float32), id=id, fields={"v": 0}) for i, id in enumerate(new)]
        )
        expected = {item.id: item.fields for item in db.scan()}
        scan = db.scan()
        first = next(scan)
        for id in old + new:
            if id != first.id:
                db.update_fields(id, {"v": 1})
        db.delete(old[3])
        db.insert(Item(vector=np.zeros(DIM, np.float32), id="later"))
        db.flush()
        db.compact()
        db.update_fields(old[5], {"v": 2})
        seen = {first.id: first.fields, **{item.id: item.fields for item in scan}}
        assert seen == expected
        live = {item.id: item.fields.get("v") for item in db.scan()}
        assert live["later"] is None and old[3] not in live and live[old[5]] == 2
        assert all(live[id] == 1 for id in old + new if id not in (first.id, old[3], old[5]))
