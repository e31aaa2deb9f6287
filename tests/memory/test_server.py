"""The HTTP API over the memory SDK: each route is the SDK call, errors keep their types and fields, and
no request of one user sees another's memories."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from t4dm import Memory, errors
from t4dm.server import create_app

from .conftest import bag_of_words


@pytest.fixture
def client(tmp_path):
    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    with TestClient(create_app(memory, close_on_shutdown=True)) as client:
        yield client
    assert memory.db.closed  # the app closed the memory when it stopped


def _add(client, content, **scope):
    response = client.post("/memories", json={"content": content, **scope})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_add_search_get_update_history_delete(client):
    [paris] = _add(
        client, "Alice moved to Paris in May", user_id="alice", valid_at="2023-05-08T00:00:00+00:00"
    )
    assert paris["event"] == "ADD" and paris["id"]
    _add(client, "Bob likes sailing on the lake", user_id="bob")
    hits = client.post("/search", json={"query": "where does Alice live? Paris", "user_id": "alice"}).json()[
        "hits"
    ]
    assert [h["id"] for h in hits] == [paris["id"]]  # bob's memory is not in alice's scope
    assert hits[0]["scores"]["dense"] > 0 and hits[0]["memory"]["valid_from"].startswith("2023-05-08")
    batch = client.post(
        "/search/batch", json={"queries": ["where does Alice live? Paris", "sailing"], "user_id": "alice"}
    ).json()["results"]
    assert [[h["id"] for h in r["hits"]] for r in batch] == [
        [paris["id"]]
    ] * 2  # bob's sailing is not alice's
    refused = client.post("/search/batch", json={"queries": ["fine", ""], "user_id": "alice"})
    assert refused.status_code == 400 and refused.json()["field"] == "queries[1]"

    got = client.get(f"/memories/{paris['id']}").json()
    assert got["text"] == "Alice moved to Paris in May" and got["user_id"] == "alice"
    before_update = datetime.now(UTC).isoformat()
    updated = client.patch(f"/memories/{paris['id']}", json={"text": "Alice moved to Lisbon in June"}).json()
    assert updated["id"] == paris["id"] and updated["text"] == "Alice moved to Lisbon in June"
    history = client.get(f"/memories/{paris['id']}/history").json()
    assert [v["text"] for v in history] == ["Alice moved to Paris in May", "Alice moved to Lisbon in June"]
    # what did we know before the update
    then = client.get(f"/memories/{paris['id']}", params={"as_of": before_update}).json()
    assert then["text"] == "Alice moved to Paris in May"

    assert client.delete(f"/memories/{paris['id']}").status_code == 204
    assert client.get(f"/memories/{paris['id']}").status_code == 404
    assert client.delete(f"/memories/{paris['id']}").status_code == 404
    assert client.delete("/memories", params={"user_id": "bob"}).json() == {"deleted": 1}
    assert client.get("/health").json() == {"status": "ok", "memories": 0}
    # erase: the deleted memory's past too, once the store compacts (a consolidation does)
    assert client.get(f"/memories/{paris['id']}/history").status_code == 200
    assert client.delete(f"/memories/{paris['id']}", params={"erase": True}).status_code == 204
    assert client.post("/consolidate").status_code == 200
    assert client.get(f"/memories/{paris['id']}/history").status_code == 404
    assert client.get(f"/memories/{paris['id']}", params={"as_of": before_update}).status_code == 404
    assert client.delete(f"/memories/{paris['id']}", params={"erase": True}).status_code == 404
    assert client.delete("/memories", params={"user_id": "bob", "erase": True}).json() == {"erased": 1}


def test_chat_messages_stats_and_consolidation(client):
    results = _add(
        client,
        [{"role": "user", "content": "I adopted a cat named Miso", "speaker": "Maya"},
         {"role": "assistant", "content": "Congratulations on Miso!"}],
        user_id="maya", run_id="s1",
    )  # fmt: skip
    assert [r["event"] for r in results] == ["ADD", "ADD"]
    stats = client.get("/stats").json()
    assert stats["memories"] == 2 and stats["users"] == 1 and stats["embedder"]["dim"] > 0
    report = client.post("/consolidate", json={"phases": ["nrem"]}).json()
    assert report["phases"] == ["nrem"] and "bands_after" in report


def test_errors_keep_their_type_and_field(client):
    response = client.post("/memories", json={"content": "", "user_id": "alice"})
    assert response.status_code == 400 and response.json()["error"] == "InvalidInput"
    response = client.post("/memories", json={"content": "no scope at all"})
    assert response.status_code == 400 and response.json()["field"] in ("user_id", "scope")
    response = client.post(
        "/memories", json={"content": "x", "user_id": "a", "valid_at": "2023-05-08T00:00:00"}
    )
    assert response.status_code == 400 and response.json()["field"] == "valid_at"  # a naive time
    response = client.post("/search", json={"query": "x", "user_id": "a", "policy": "newest"})
    assert response.status_code == 400 and response.json()["field"] == "policy"
    response = client.post("/search", json={"query": "x", "user_id": "a", "recency_half_life_days": 0})
    assert response.status_code == 400 and response.json()["field"] == "recency_half_life_days"
    assert client.patch("/memories/nope", json={"text": "y"}).status_code == 404
    assert client.get("/memories/nope/history").status_code == 404
    assert client.post("/search", json={"user_id": "a"}).status_code == 422  # no query: the body's shape
    assert client.get("/health").json()["memories"] == 0  # nothing was written by the refused calls


def test_the_commands_say_which_extra_they_need(tmp_path, monkeypatch, capsys):
    import t4dm.cli as cli

    real = cli.import_module

    def missing(name, *args):
        if name in ("t4dm.server", "t4dm.adapters.mcp"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(cli, "import_module", missing)
    assert cli.main(["serve", "--path", str(tmp_path / "m")]) == 2
    assert "needs the server extra" in capsys.readouterr().err
    assert cli.main(["mcp", "--path", str(tmp_path / "m")]) == 2
    assert "needs the mcp extra" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # nothing opened


def test_concurrent_requests_lose_nothing(client):
    """FastAPI runs these handlers on a thread pool: writes and searches from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> int:
        _add(client, f"note {i} about topic {i % 5} and item {i}", user_id=f"user{i % 3}", dedup=False)
        response = client.post("/search", json={"query": f"topic {i % 5}", "user_id": f"user{i % 3}"})
        assert response.status_code == 200
        return len(response.json()["hits"])

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(work, range(40)))
    assert all(n >= 1 for n in found)  # each search sees at least its own user's note
    assert client.get("/health").json()["memories"] == 40
    for user in range(3):
        expected = sum(1 for i in range(40) if i % 3 == user)
        assert client.delete("/memories", params={"user_id": f"user{user}"}).json() == {"deleted": expected}


def test_a_token_guards_every_route(tmp_path):
    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    with TestClient(create_app(memory, token="s3cret", close_on_shutdown=True)) as client:
        for method, path, body in [
            ("post", "/memories", {"content": "Alice moved to Paris", "user_id": "alice"}),
            ("post", "/search", {"query": "Paris", "user_id": "alice"}),
            ("get", "/health", None),
            ("get", "/stats", None),
            ("delete", "/memories?user_id=alice", None),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}):  # fmt: skip
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"] == "Unauthorized"
        assert len(memory) == 0  # nothing was written without the token
        good = {"Authorization": "Bearer s3cret"}
        added = client.post(
            "/memories", json={"content": "Alice moved to Paris", "user_id": "alice"}, headers=good
        )
        assert added.status_code == 200 and len(memory) == 1
        hits = client.post("/search", json={"query": "Paris", "user_id": "alice"}, headers=good).json()[
            "hits"
        ]
        assert [h["text"] for h in hits] == ["Alice moved to Paris"]
        assert client.get("/openapi.json").status_code == 200  # the schema stays readable


def test_bad_tokens_are_refused(tmp_path):
    from t4dm import errors

    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    try:
        for token in ("", "   ", 42):
            with pytest.raises(errors.InvalidInput, match="token"):
                create_app(memory, token=token)
    finally:
        memory.close()


def test_serving_beyond_this_machine_without_a_token_warns(tmp_path, monkeypatch, capsys):
    import sys
    import types

    from t4dm import server

    ran = []

    def run(app, **kw):  # instead of uvicorn: start and stop the app (its shutdown closes the memory)
        with TestClient(app):
            ran.append(kw)

    monkeypatch.setitem(sys.modules, "uvicorn", types.SimpleNamespace(run=run))
    for host, warned in [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True)]:
        server.serve(str(tmp_path / host.replace(":", "_")), host=host, embedder=bag_of_words)
        assert ("without a token" in capsys.readouterr().err) is warned, host
    server.serve(str(tmp_path / "guarded"), host="0.0.0.0", embedder=bag_of_words, token="s3cret")
    assert "without a token" not in capsys.readouterr().err
    assert [kw["host"] for kw in ran] == ["127.0.0.1", "localhost", "::1", "0.0.0.0", "0.0.0.0"]


def test_serve_takes_its_token_from_the_flag_or_the_environment(tmp_path, monkeypatch):
    from t4dm import cli, server

    calls = []
    monkeypatch.setattr(server, "serve", lambda path, **kw: calls.append(kw["token"]))
    monkeypatch.delenv("T4DM_TOKEN", raising=False)
    assert cli.main(["serve", "--path", str(tmp_path / "m")]) == 0
    monkeypatch.setenv("T4DM_TOKEN", "from-env")
    assert cli.main(["serve", "--path", str(tmp_path / "m")]) == 0
    assert cli.main(["serve", "--path", str(tmp_path / "m"), "--token", "from-flag"]) == 0
    monkeypatch.setenv("T4DM_TOKEN", "")  # set but empty: no token
    assert cli.main(["serve", "--path", str(tmp_path / "m")]) == 0
    assert calls == [None, "from-env", "from-flag", None]


_TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-ops": "*"}


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_users_token_reaches_that_users_memories_only(tmp_path):
    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    with TestClient(create_app(memory, tokens=_TOKENS, close_on_shutdown=True)) as client:
        alice, bob, ops = _as("tok-alice"), _as("tok-bob"), _as("tok-ops")
        [mine] = client.post("/memories", json={"content": "Alice moved to Paris", "user_id": "alice"},
                             headers=alice).json()["results"]  # fmt: skip
        client.post("/memories", json={"content": "Bob moved to Paris too", "user_id": "bob"}, headers=bob)
        assert len(memory) == 2
        # another user's scope: 403 naming the field, nothing written or read
        for method, path, body in [
            ("post", "/memories", {"content": "planted", "user_id": "alice"}),
            ("post", "/search", {"query": "Paris", "user_id": "alice"}),
            ("post", "/search", {"query": "Paris"}),  # every user's: not for a user's token
            ("delete", "/memories?user_id=alice", None),
            ("delete", "/memories", None),
        ]:
            response = client.request(method, path, json=body, headers=bob)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["field"] == "user_id" and "'bob'" in response.json()["reason"]
        assert len(memory) == 2
        # another user's memory by id: as if it did not exist, and left as it was
        id = mine["id"]
        assert client.get(f"/memories/{id}", headers=bob).status_code == 404
        assert client.get(f"/memories/{id}/history", headers=bob).status_code == 404
        assert (
            client.patch(f"/memories/{id}", json={"text": "Alice moved to Rome"}, headers=bob).status_code
            == 404
        )
        assert client.delete(f"/memories/{id}", headers=bob).status_code == 404
        assert client.delete(f"/memories/{id}", params={"erase": True}, headers=bob).status_code == 404
        assert memory.get(id).text == "Alice moved to Paris" and len(memory.history(id)) == 1
        # the calls that touch every user need an every-user token
        for method, path in [("post", "/consolidate"), ("get", "/stats")]:
            response = client.request(method, path, headers=alice)
            assert response.status_code == 403 and response.json()["field"] == "token"
            assert client.request(method, path, headers=ops).status_code == 200
        # the owner and the every-user token keep full use
        hits = client.post("/search", json={"query": "Paris", "user_id": "bob"}, headers=bob).json()["hits"]
        assert [h["text"] for h in hits] == ["Bob moved to Paris too"]
        assert client.get(f"/memories/{id}", headers=alice).json()["text"] == "Alice moved to Paris"
        assert (
            client.patch(f"/memories/{id}", json={"text": "Alice moved to Rome"}, headers=ops).status_code
            == 200
        )
        assert client.delete(f"/memories/{id}", headers=alice).status_code == 204
        assert client.post("/search", json={"query": "x"}, headers=_as("tok-carol")).status_code == 401


def test_token_tables_are_checked(tmp_path):
    import json

    from t4dm import errors
    from t4dm.auth import load_tokens

    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    try:
        for tokens in ({"": "alice"}, {"tok": ""}, {"tok": 7}, ["tok"]):
            with pytest.raises(errors.InvalidInput, match="token"):
                create_app(memory, tokens=tokens)
        with pytest.raises(errors.InvalidInput, match="one principal"):
            create_app(memory, token="tok", tokens={"tok": "alice"})
    finally:
        memory.close()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "good.json").write_text(json.dumps(_TOKENS))
    for name in ("bad.json", "empty.json", "missing.json"):
        with pytest.raises(errors.InvalidInput, match="tokens"):
            load_tokens(tmp_path / name)
    assert load_tokens(tmp_path / "good.json") == _TOKENS


def test_serve_and_mcp_read_a_tokens_file(tmp_path, monkeypatch, capsys):
    import json

    from t4dm import cli, server

    (tmp_path / "tokens.json").write_text(json.dumps(_TOKENS))
    (tmp_path / "bad.json").write_text('{"tok": ""}')
    calls = []
    monkeypatch.setattr(server, "serve", lambda path, **kw: calls.append(kw["tokens"]))
    assert cli.main(["serve", "--path", str(tmp_path / "m"), "--tokens", str(tmp_path / "tokens.json")]) == 0
    assert calls == [str(tmp_path / "tokens.json")]  # checked, then handed on as a path to watch
    assert cli.main(["serve", "--path", str(tmp_path / "m"), "--tokens", str(tmp_path / "bad.json")]) == 2
    assert "t4dm serve: " in capsys.readouterr().err and len(calls) == 1
    if importlib.util.find_spec("mcp") is not None:
        assert (
            cli.main(["mcp", "--path", str(tmp_path / "m"), "--tokens", str(tmp_path / "tokens.json")]) == 2
        )
        assert "stdio has no network side" in capsys.readouterr().err


def test_a_tokens_file_is_read_again_when_it_changes(tmp_path, capsys):
    """Tokens issued and revoked without a restart; a broken or vanished file keeps the tokens as they were."""
    import json
    import os

    path = tmp_path / "tokens.json"

    def write(content: str) -> None:
        path.write_text(content)
        stat = os.stat(path)  # a new mtime even where the file system's clock is coarse
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    write(json.dumps({"tok-alice": "alice", "tok-ops": "*"}))
    memory = Memory(tmp_path / "memories", embedder=bag_of_words)
    with TestClient(create_app(memory, tokens=path, close_on_shutdown=True)) as client:

        def status(token: str) -> int:
            return client.post(
                "/search", json={"query": "x", "user_id": "alice"}, headers=_as(token)
            ).status_code

        assert (status("tok-alice"), status("tok-bob"), status("tok-ops")) == (200, 401, 200)
        # alice's token revoked, bob's issued, as a user of his own
        write(json.dumps({"tok-bob": "bob", "tok-ops": "*"}))
        assert (status("tok-alice"), status("tok-bob"), status("tok-ops")) == (401, 403, 200)
        # a broken file: the tokens stay as they were, and it is said once
        write('{"tok-eve": ""}')
        assert (status("tok-eve"), status("tok-bob"), status("tok-ops")) == (401, 403, 200)
        assert capsys.readouterr().err.count("cannot be used") == 1
        path.unlink()
        assert (status("tok-bob"), status("tok-ops")) == (403, 200)
        assert capsys.readouterr().err.count("cannot be used") == 1
        write(json.dumps({"tok-alice": "alice"}))  # back, and read again
        assert (status("tok-alice"), status("tok-ops")) == (200, 401)


def test_a_read_replica_serves_reads_beside_the_writer_and_refuses_writes(tmp_path, monkeypatch):
    """``t4dm serve --read-only``: the app over a read-only memory catches up with the writer before a request
    (refresh_every=0: every request; 3600: not yet), and writes answer 403 ReadOnlyStore naming the field."""
    from t4dm import cli, server

    path = tmp_path / "memories"
    writer = Memory(path, embedder=bag_of_words)
    writer.add("Alice moved to Paris", user_id="alice")
    replica = Memory(path, embedder=bag_of_words, read_only=True)
    lagging = Memory(path, embedder=bag_of_words, read_only=True)
    with (
        TestClient(create_app(replica, refresh_every=0, close_on_shutdown=True)) as client,
        TestClient(create_app(lagging, refresh_every=3600, close_on_shutdown=True)) as slow,
    ):
        [lisbon] = writer.add("Alice visited Lisbon in June", user_id="alice")
        hits = client.post("/search", json={"query": "Lisbon", "user_id": "alice"}).json()["hits"]
        assert hits[0]["id"] == lisbon.id  # caught up before the request
        assert client.get(f"/memories/{lisbon.id}").json()["text"] == "Alice visited Lisbon in June"
        assert slow.get(f"/memories/{lisbon.id}").status_code == 404  # its last catch-up is too recent
        for response in (
            client.post("/memories", json={"content": "Alice likes tea", "user_id": "alice"}),
            client.patch(f"/memories/{lisbon.id}", json={"text": "Alice visited Porto"}),
            client.delete(f"/memories/{lisbon.id}"),
        ):
            assert response.status_code == 403
            assert response.json()["error"] == "ReadOnlyStore" and response.json()["field"] == "read_only"
        assert writer.get(lisbon.id).text == "Alice visited Lisbon in June"
    writer.close()
    with pytest.raises(errors.InvalidInput, match="refresh_every"):
        create_app(writer, refresh_every=-1)
    calls = []
    monkeypatch.setattr(
        server, "serve", lambda path, **kw: calls.append((kw["read_only"], kw["refresh_every"]))
    )
    assert cli.main(["serve", "--path", str(path), "--read-only", "--refresh-every", "0.5"]) == 0
    assert cli.main(["serve", "--path", str(path)]) == 0
    assert calls == [(True, 0.5), (False, 1.0)]
