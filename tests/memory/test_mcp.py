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


def _run(memory: Memory, calls, server=None):
    """Call the tools in order; returns each result (its structured content, or the error text)."""

    async def main():
        out = []
        async with Client(server or create_mcp_server(memory)) as client:
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
        # erased: the past too, once the store compacts (a consolidation does)
        [erased] = _run(memory, [("forget", {"id": first["id"], "erase": True})])[1:]
        assert erased == {"erased": first["id"]} and len(memory.history(first["id"])) == 2
        memory.consolidate(progress=False)
        assert memory.history(first["id"]) == []


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


# ------------------------------------------------------------------------------------------------------------
# over HTTP, behind a bearer token
# ------------------------------------------------------------------------------------------------------------

_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _remember(content: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "remember", "arguments": {"content": content, "user_id": "alice"}},
    }


def _http_client(memory: Memory, token: str | None):
    from starlette.testclient import TestClient

    from t4dm.adapters.mcp import mcp_http_app

    app = mcp_http_app(memory, token=token, json_response=True, stateless_http=True)
    return TestClient(app, base_url="http://127.0.0.1:8001")  # the Host the SDK's rebinding check allows


def test_http_token_keeps_out_requests_without_it(tmp_path):
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory, _http_client(memory, "s3cret") as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            response = client.post("/mcp", json=_remember("refused"), headers={**_HEADERS, **headers})
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["reason"]
        assert len(memory) == 0  # nothing refused reached the memory
        response = client.post(
            "/mcp",
            json=_remember("Alice moved to Paris"),
            headers={**_HEADERS, "authorization": "bearer s3cret"},
        )
        assert response.status_code == 200 and not response.json()["result"]["isError"]
        assert len(memory) == 1 and memory.search("Paris", user_id="alice")[0].text == "Alice moved to Paris"


def test_http_without_token_is_open(tmp_path):
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory, _http_client(memory, None) as client:
        response = client.post("/mcp", json=_remember("Alice moved to Paris"), headers=_HEADERS)
        assert response.status_code == 200 and len(memory) == 1


def test_bad_token_and_transport_are_refused(tmp_path):
    from t4dm.adapters.mcp import mcp_http_app, run_mcp
    from t4dm.errors import InvalidInput

    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        for token in ("", "  ", 42):
            with pytest.raises(InvalidInput, match="token"):
                mcp_http_app(memory, token=token)
    with pytest.raises(InvalidInput, match="stdio has no network side"):
        run_mcp(str(tmp_path / "other"), transport="stdio", token="s3cret")
    with pytest.raises(InvalidInput, match="transport"):
        run_mcp(str(tmp_path / "other"), transport="sse")
    assert not (tmp_path / "other").exists()  # refused before the memory was opened


def test_mcp_command_passes_its_token_to_http_only(tmp_path, monkeypatch):
    from t4dm import cli
    from t4dm.adapters import mcp as adapter

    calls = []
    monkeypatch.setattr(adapter, "run_mcp", lambda path, **kw: calls.append(kw))
    monkeypatch.setenv("T4DM_TOKEN", "from-env")
    path = str(tmp_path / "m")
    assert cli.main(["mcp", "--path", path]) == 0  # stdio: no token, whatever the environment says
    assert cli.main(["mcp", "--path", path, "--transport", "streamable-http"]) == 0
    assert cli.main(["mcp", "--path", path, "--transport", "streamable-http", "--token", "from-flag"]) == 0
    assert [kw.get("token") for kw in calls] == [None, "from-env", "from-flag"]
    assert calls[1]["host"] == "127.0.0.1" and calls[1]["port"] == 8001
    assert cli.main(["mcp", "--path", path, "--read-only"]) == 0
    assert [kw["read_only"] for kw in calls] == [False, False, False, True]


def test_a_read_only_memory_offers_recall_and_history_and_catches_up(tmp_path):
    """Over a memory opened read-only beside its writer the server offers recall and history only, and each
    call first catches up with what the writer wrote."""
    with Memory(tmp_path / "m", embedder=bag_of_words) as writer:
        [paris] = writer.add("Alice moved to Paris", user_id="alice")
        with Memory(tmp_path / "m", embedder=bag_of_words, read_only=True) as reader:
            server = create_mcp_server(reader)
            writer.update(paris.id, text="Alice moved to Lisbon")  # after the reader opened
            names, hits, versions = _run(
                reader,
                [("recall", {"query": "Lisbon", "user_id": "alice"}), ("history", {"id": paris.id})],
                server,
            )
    assert names == ["history", "recall"]
    assert [h["text"] for h in hits] == ["Alice moved to Lisbon"]
    assert [v["text"] for v in versions] == ["Alice moved to Paris", "Alice moved to Lisbon"]


def test_http_warns_beyond_loopback_without_a_token(tmp_path, monkeypatch, capsys):
    import uvicorn

    from t4dm.adapters.mcp import run_mcp

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    run_mcp(str(tmp_path / "a"), transport="streamable-http", embedder=bag_of_words, host="0.0.0.0")
    assert "t4dm mcp: listening on 0.0.0.0 without a token" in capsys.readouterr().err
    run_mcp(
        str(tmp_path / "b"),
        transport="streamable-http",
        embedder=bag_of_words,
        host="0.0.0.0",
        token="s3cret",
    )
    run_mcp(str(tmp_path / "c"), transport="streamable-http", embedder=bag_of_words)
    assert "without a token" not in capsys.readouterr().err


def _call(client, token: str, name: str, arguments: dict) -> dict:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    response = client.post("/mcp", json=body, headers={**_HEADERS, "authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_http_a_users_token_reaches_that_users_memories_only(tmp_path):
    from starlette.testclient import TestClient

    from t4dm.adapters.mcp import mcp_http_app

    tokens = {"tok-alice": "alice", "tok-bob": "bob", "tok-ops": "*"}
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        app = mcp_http_app(memory, tokens=tokens, json_response=True, stateless_http=True)
        with TestClient(app, base_url="http://127.0.0.1:8001") as client:
            added = _call(
                client, "tok-alice", "remember", {"content": "Alice moved to Paris", "user_id": "alice"}
            )
            [mine] = added["structuredContent"]["result"]
            for name, arguments in [
                ("remember", {"content": "planted", "user_id": "alice"}),
                ("recall", {"query": "Paris", "user_id": "alice"}),
            ]:
                result = _call(client, "tok-bob", name, arguments)
                assert result["isError"] and "user_id" in result["content"][0]["text"], result
            for name, arguments in [
                ("revise", {"id": mine["id"], "text": "Alice moved to Rome"}),
                ("forget", {"id": mine["id"]}),
                ("history", {"id": mine["id"]}),
            ]:
                result = _call(client, "tok-bob", name, arguments)
                assert result["isError"] and mine["id"] in result["content"][0]["text"], result
            result = _call(client, "tok-alice", "consolidate", {})
            assert result["isError"] and "every-user token" in result["content"][0]["text"]
            assert len(memory) == 1 and memory.get(mine["id"]).text == "Alice moved to Paris"
            hits = _call(client, "tok-alice", "recall", {"query": "Paris", "user_id": "alice"})
            assert [h["text"] for h in hits["structuredContent"]["result"]] == ["Alice moved to Paris"]
            assert not _call(client, "tok-ops", "consolidate", {})["isError"]
            assert not _call(client, "tok-ops", "history", {"id": mine["id"]})["isError"]


def test_http_a_tokens_file_revokes_without_a_restart(tmp_path):
    import json
    import os

    from starlette.testclient import TestClient

    from t4dm.adapters.mcp import mcp_http_app

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tok-alice": "alice"}))
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        app = mcp_http_app(memory, tokens=str(path), json_response=True, stateless_http=True)
        with TestClient(app, base_url="http://127.0.0.1:8001") as client:
            assert not _call(client, "tok-alice", "remember", {"content": "kept", "user_id": "alice"})[
                "isError"
            ]
            path.write_text(json.dumps({"tok-alice-2": "alice"}))
            stat = os.stat(path)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            response = client.post(
                "/mcp", json=_remember("refused"), headers={**_HEADERS, "authorization": "Bearer tok-alice"}
            )
            assert response.status_code == 401
            assert not _call(client, "tok-alice-2", "recall", {"query": "kept", "user_id": "alice"})[
                "isError"
            ]
            assert len(memory) == 1
