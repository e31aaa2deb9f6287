"""Corruption: a torn WAL tail is cut off with a warning; anything else bad raises a typed error naming the file."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, Item, TornWALWarning
from t4dm.storage.segment import Segment

from .conftest import DIM, vec


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def _wal_file(path: str) -> str:
    [name] = os.listdir(os.path.join(path, "wal"))
    return os.path.join(path, "wal", name)


def _segment_file(path: str) -> str:
    [name] = [n for n in os.listdir(os.path.join(path, "segments")) if n.endswith(".seg")]
    return os.path.join(path, "segments", name)


def _three_records(path: str) -> list[int]:
    """Write three WAL records; return the WAL size after each."""
    sizes = []
    with T4DX.open(path, dim=DIM) as db:
        for i in range(3):
            db.insert(Item(vector=vec(i), id=f"r{i}", fields={"i": i}))
            sizes.append(os.path.getsize(_wal_file(path)))
    return sizes


@pytest.mark.parametrize("where", ["first-byte", "middle", "last-byte"])
def test_flipped_byte_in_wal_tail_is_truncated_with_warning(tmp_path, where):
    path = str(tmp_path / "s")
    sizes = _three_records(path)
    offset = {"first-byte": sizes[1], "middle": (sizes[1] + sizes[2]) // 2, "last-byte": sizes[2] - 1}[where]
    _flip(_wal_file(path), offset)
    with pytest.warns(TornWALWarning, match=r"torn record at byte \d+"):
        db = T4DX.open(path)
    with db:
        assert [db.get(f"r{i}") is not None for i in range(3)] == [True, True, False]
        db.insert(Item(vector=vec(7), id="after"))
    assert os.path.getsize(_wal_file(path)) > sizes[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the truncated log is clean now
        with T4DX.open(path) as db:
            assert db.get("after") is not None and len(db) == 3


def test_torn_partial_record_is_truncated(tmp_path):
    path = str(tmp_path / "s")
    sizes = _three_records(path)
    os.truncate(_wal_file(path), sizes[2] - 5)
    with pytest.warns(TornWALWarning), T4DX.open(path) as db:
        assert len(db) == 2


def test_flipped_byte_before_valid_records_is_corruption(tmp_path):
    path = str(tmp_path / "s")
    sizes = _three_records(path)
    _flip(_wal_file(path), (sizes[0] + sizes[1]) // 2)  # inside the second of three records
    with pytest.raises(errors.CorruptWAL) as info:
        T4DX.open(path)
    assert info.value.path == _wal_file(path) and info.value.offset == sizes[0]
    assert _wal_file(path) in str(info.value)
    assert os.path.getsize(_wal_file(path)) == sizes[2]  # nothing was cut
    with pytest.raises(errors.CorruptWAL):  # and the store refuses again, lock released
        T4DX.open(path)


def test_flipped_length_field_is_corruption_when_records_follow(tmp_path):
    path = str(tmp_path / "s")
    sizes = _three_records(path)
    _flip(_wal_file(path), sizes[0] + 5)  # the body length of the second record
    with pytest.raises(errors.CorruptWAL):
        T4DX.open(path)


def test_bad_wal_header(tmp_path):
    path = str(tmp_path / "s")
    _three_records(path)
    _flip(_wal_file(path), 2)
    with pytest.raises(errors.CorruptWAL, match="bad header"):
        T4DX.open(path)


@pytest.mark.parametrize("region", ["magic", "column", "vectors", "footer", "tail"])
def test_flipped_byte_in_segment(tmp_path, region):
    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM) as db:
        db.insert_batch(np.stack([vec(i) for i in range(20)]), [{"i": i} for i in range(20)])
        db.flush()
    seg = _segment_file(path)
    size = os.path.getsize(seg)
    columns = Segment(seg, 1, DIM).meta["columns"]  # {name: [offset, nbytes, dtype, shape, crc]}
    offset = {
        "magic": 1,
        "column": columns["seq"][0] + 3,
        "vectors": columns["vectors"][0] + columns["vectors"][1] // 2,
        "footer": size - 40,
        "tail": size - 3,
    }[region]
    _flip(seg, offset)
    with pytest.raises(errors.CorruptSegment) as info:
        T4DX.open(path)
    assert info.value.path == seg and seg in str(info.value)


def test_flipped_byte_in_manifest(tmp_path):
    path = str(tmp_path / "s")
    _three_records(path)
    manifest = os.path.join(path, "MANIFEST")
    for offset in (0, 30, os.path.getsize(manifest) - 1):
        _flip(manifest, offset)
        with pytest.raises(errors.CorruptManifest) as info:
            T4DX.open(path)
        assert info.value.path == manifest
        _flip(manifest, offset)  # flip back: the store opens again
        T4DX.open(path).close()


def test_leftovers_of_a_crash_are_removed(tmp_path):
    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM) as db:
        db.insert(Item(vector=vec(0), id="a"))
        db.flush()
    seg_dir = os.path.join(path, "segments")
    for name in ("00000099.seg", "00000100.seg.tmp"):
        with open(os.path.join(seg_dir, name), "wb") as f:
            f.write(b"half-written")
    with open(os.path.join(path, "MANIFEST.tmp"), "wb") as f:
        f.write(b"half-written")
    with T4DX.open(path) as db:
        assert db.get("a") is not None
    assert sorted(os.listdir(seg_dir)) == [os.path.basename(_segment_file(path))]


def test_format_1_stores_open_and_upgrade_and_a_format_1_reader_refuses_format_2(tmp_path, monkeypatch):
    """Segments and WAL files are format 2 since κ overlays and erasing tombstones (a reader of format 1 would
    misread those rows). A store written in format 1 opens, and its writes go to a new WAL file of format 2
    (the old file's records replay too); a library that reads format 1 only refuses the new files."""
    from t4dm.storage import segment as segment_module
    from t4dm.storage import wal as wal_module

    path = str(tmp_path / "s")
    with monkeypatch.context() as old:  # write as a format-1 library
        old.setattr(segment_module, "FORMAT", 1)
        old.setattr(wal_module, "FORMAT", 1)
        with T4DX.open(path, dim=DIM) as db:
            ids = db.insert([Item(vec(i), kappa=0.1) for i in range(3)])
            db.flush()
            db.insert(Item(vec(9), id="in-the-log"))
    wal_dir = os.path.join(path, "wal")
    [number] = wal_module.wal_files(wal_dir)
    assert wal_module.file_format(wal_dir, number) == 1
    with T4DX.open(path) as db:  # this library: reads both, writes format 2
        assert [db.get(id).kappa for id in ids] == [0.1] * 3 and db.get("in-the-log") is not None
        db.update_kappa(ids[0], kappa=0.9)
    assert wal_module.wal_files(wal_dir) == [number, number + 1]
    assert wal_module.file_format(wal_dir, number + 1) == 2
    with T4DX.open(path) as db:
        assert db.get(ids[0]).kappa == 0.9 and db.get("in-the-log") is not None
        db.flush()  # a segment of format 2
    with monkeypatch.context() as old:  # a format-1 library refuses, instead of misreading the κ overlay
        old.setattr(segment_module, "FORMAT", 1)
        old.setattr(wal_module, "FORMAT", 1)
        with pytest.raises((errors.CorruptSegment, errors.CorruptWAL), match="format 2 is newer"):
            T4DX.open(path)
