"""`t4dm demo` (the main job) runs end to end; the storage-only demo too."""

from __future__ import annotations

import os

import pytest

from .memory.conftest import bag_of_words


def test_demo_runs_and_answers_what_we_knew_then(tmp_path):
    pytest.importorskip("matplotlib")
    from t4dm.demo import run_demo

    lines: list[str] = []
    summary = run_demo(out_dir=str(tmp_path / "out"), embedder=bag_of_words, say=lines.append)
    assert "Lisbon" in summary["as_of_text"] and "Porto" in summary["now_text"]
    assert summary["memories"] >= 30
    for path in summary["figures"]:
        assert os.path.getsize(path) > 1000 and path.endswith(".png")
    text = "\n".join(lines)
    assert "Searches after sleep" in text and "κ" in text


def test_storage_demo_runs(tmp_path):
    from t4dm.demo_storage import run_storage_demo

    run_storage_demo(path=str(tmp_path / "store"), n=500)
