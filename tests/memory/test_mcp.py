"""The memory as a Model Context Protocol server: tools called through the official SDK's in-process
client, scoped per user, with bad input as tool errors that name the field and write nothing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mcp")

import anyio
from mcp import Client

from t4dm import Memory
from t4dm.adapters.mcp import create_mcp_server

from .conftest import bag_of_words


def _run(memory: Memory, calls):
    """Call the tools in order; returns each result (its structured content, or the error text)."""

    async def main():
        out = []
        async with Client(create_mcp_server(memory)) as client:
            tools = await client.list_tools()
            out.append(sorted(t.name for t in tools.tools))
            for name, arguments in calls:
                result = await client.call_tool(name, arguments)
                if result.is_error:
                    out.append(("error", result.content[0].text))
                else:
                    data = result.structured_content
                    out.append(
                        data.get("result", data)
                        if isinstance(data, dict)
                        else json.loads(result.content[0].text)
                    )
        return out

    return anyio.run(main)


def test_tools_remember_recall_revise_history_forget(tmp_path):
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        names, added, _, hits = _run(
            memory,
            [
                ("remember", {"content": "Alice moved to Paris", "user_id": "alice",
                              "valid_at": "2023-05-08T00:00:00+00:00"}),
                ("remember", {"content": "Bob moved to Paris too", "user_id": "bob"}),
                ("recall", {"query": "where did Alice move? Paris", "user_id": "alice"}),
            ],
        )  # fmt: skip
        assert names == ["consolidate", "forget", "history", "recall", "remember", "revise"]
        [first] = added
        assert first["event"] == "ADD"
        assert [h["id"] for h in hits] == [first["id"]]  # bob's memory is out of alice's scope
        assert hits[0]["valid_from"].startswith("2023-05-08") and hits[0]["scores"]["dense"] > 0
        revised, versions, forgotten, after = _run(
            memory,
            [
                ("revise", {"id": first["id"], "text": "Alice moved to Lisbon"}),
                ("history", {"id": first["id"]}),
                ("forget", {"id": first["id"]}),
                ("recall", {"query": "Alice", "user_id": "alice"}),
            ],
        )[1:]
        assert revised["text"] == "Alice moved to Lisbon"
        assert [v["text"] for v in versions] == ["Alice moved to Paris", "Alice moved to Lisbon"]
        assert forgotten == {"forgotten": first["id"]} and after == []
        assert memory.get(first["id"]) is None and len(memory) == 1  # bob's is still there


def test_bad_input_is_a_tool_error_naming_the_field(tmp_path):
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        results = _run(
            memory,
            [
                ("remember", {"content": "", "user_id": "alice"}),
                ("remember", {"content": "x", "user_id": "alice", "valid_at": "2023-05-08T00:00:00"}),
                ("remember", {"content": "x", "user_id": "alice", "valid_at": "last May"}),
                ("recall", {"query": "x", "user_id": "alice", "k": 0}),
                ("forget", {"id": "nope"}),
                ("consolidate", {"phases": ["dream"]}),
            ],
        )[1:]
        assert all(kind == "error" for kind, _ in results), results
        texts = [text for _, text in results]
        assert "content" in texts[0] or "text" in texts[0]
        assert "valid_at" in texts[1] and "valid_at" in texts[2] and "k=0" in texts[3]
        assert "nope" in texts[4] and "dream" in texts[5]
        assert len(memory) == 0  # nothing written by a refused call
