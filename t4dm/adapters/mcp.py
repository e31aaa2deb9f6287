"""The memory SDK as a Model Context Protocol server: ``t4dm mcp --path DIR`` (stdio, for a desktop agent)
or ``--transport streamable-http``. Needs the ``mcp`` extra (the official ``mcp`` SDK, 2.x).

Tools, each one SDK call scoped by ``user_id`` (and optionally ``run_id``):

- ``remember(content, user_id, run_id=None, valid_at=None, metadata=None)``: :meth:`Memory.add` of one text;
- ``recall(query, user_id, k=5, valid_at=None, as_of=None)``: :meth:`Memory.search`, the hits with their
  valid time and scores;
- ``revise(id, text)``: :meth:`Memory.update` (the old version stays in the history);
- ``forget(id, erase=False)``: :meth:`Memory.delete` (it stays in the past), or with ``erase``
  :meth:`Memory.erase` (gone from the past too, at the store's next compaction: the right to be forgotten);
- ``history(id)``: every version, oldest first ("what did we know when");
- ``consolidate(phases=["nrem", "rem", "prune"])``: sleep.

``t4dm mcp --read-only`` serves a memory that another process writes: ``recall`` and ``history`` only, each
catching up with the writer first.

Times are ISO 8601 strings with a time zone. Bad input comes back as a tool error whose text names the
field and the value (the SDK's :class:`~t4dm.errors.InvalidInput`); nothing is written by a refused call.

Over HTTP (:func:`mcp_http_app`, ``t4dm mcp --transport streamable-http``) tokens (``--token`` / ``T4DM_TOKEN``
for every user, ``--tokens FILE`` one per user) make every request carry ``Authorization: Bearer <token>``
(:mod:`t4dm.auth`; 401 without it), and a user's token reaches that user's memories only: another ``user_id`` is a
tool error naming the field, another user's memory by id is unknown, ``consolidate`` needs an every-user token.
MCP clients send the token as a configured header. These are shared secrets, not the OAuth flow of the MCP
specification's authorization section, which needs an authorization server.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from t4dm.auth import BearerAuth, Tokens, allows, warn_if_open
from t4dm.errors import InvalidInput, UnknownId
from t4dm.memory import Memory
from t4dm.memory.memory import parse_time

__all__ = ["create_mcp_server", "mcp_http_app", "run_mcp"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _client_errors(fn: _F) -> _F:
    """The SDK's refusals as tool errors the client reads (the MCP SDK hides other exceptions' text)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (InvalidInput, UnknownId) as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _item(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "text": item.text,
        "kind": item.kind,
        "kappa": item.kappa,
        "user_id": item.user_id,
        "run_id": item.run_id,
        "valid_from": None if item.valid_from is None else item.valid_from.isoformat(),
        "recorded_at": None if item.recorded_at is None else item.recorded_at.isoformat(),
        "superseded_at": None if item.superseded_at is None else item.superseded_at.isoformat(),
    }


def create_mcp_server(
    memory: Memory, *, name: str = "t4dm-memory", tokens: Tokens | None = None
) -> MCPServer:
    """An MCP server whose tools read and write ``memory``. With ``tokens`` each call acts for the principal of
    the token its HTTP request carried (checked already by :class:`~t4dm.auth.BearerAuth` in front). Over a
    memory opened ``read_only=True`` (beside the process that writes it) only ``recall`` and ``history`` are
    offered, and each first catches up with the writer (:meth:`~t4dm.memory.Memory.refresh`)."""
    writable = not memory.read_only
    server = MCPServer(
        name,
        instructions="Long-term memory with time: remember facts, recall them by meaning."
        if writable
        else "Long-term memory with time, read-only here: recall facts by meaning, read their history.",
    )

    def current() -> None:
        if not writable:
            memory.refresh()

    def principal(ctx: Context | None) -> str | None:
        if not tokens:
            return None
        headers = ctx.headers if ctx is not None else None
        found = tokens.principal((headers or {}).get("authorization", ""))
        if found is None:  # BearerAuth let no such request through; refuse rather than trust
            raise ToolError("Unauthorized: expected the header Authorization: Bearer <token>")
        return found

    def check_user(ctx: Context | None, user_id: str) -> None:
        who = principal(ctx)
        if not allows(who, user_id):
            raise InvalidInput("user_id", user_id, f"this token is for user_id {who!r} only")

    def owned(ctx: Context | None, id: str) -> None:
        """Unknown (as if absent) unless ``id`` is a memory of the caller's user."""
        versions = memory.history(id)
        if not versions or not allows(principal(ctx), versions[0].user_id):
            raise UnknownId(id)

    @_client_errors
    def remember(
        content: str,
        user_id: str,
        run_id: str | None = None,
        valid_at: str | None = None,
        metadata: dict[str, Any] | None = None,
        ctx: Context | None = None,
    ) -> list[dict[str, Any]]:
        """Store a memory for a user. valid_at (ISO 8601 with a time zone) is when it became true. A near
        duplicate of a stored memory is merged into it. Returns what happened: ADD, MERGE or SKIP."""
        check_user(ctx, user_id)
        results = memory.add(
            content,
            user_id=user_id,
            run_id=run_id,
            valid_at=parse_time(valid_at, "valid_at"),
            metadata=metadata,
        )
        return [{"id": r.id, "event": r.event, "tau": r.tau, "duplicate": r.duplicate} for r in results]

    @_client_errors
    def recall(
        query: str,
        user_id: str,
        k: int = 5,
        valid_at: str | None = None,
        as_of: str | None = None,
        ctx: Context | None = None,
    ) -> list[dict[str, Any]]:
        """The user's memories most relevant to a query, best first. valid_at: what was true then; as_of:
        what the store knew then (ISO 8601 with a time zone)."""
        check_user(ctx, user_id)
        current()
        hits = memory.search(
            query,
            user_id=user_id,
            k=k,
            valid_at=parse_time(valid_at, "valid_at"),
            as_of=parse_time(as_of, "as_of"),
        )
        return [{**_item(h.memory), "score": h.score, "scores": h.scores} for h in hits]

    @_client_errors
    def revise(id: str, text: str, ctx: Context | None = None) -> dict[str, Any]:
        """Replace a memory's text; the old version stays in its history."""
        owned(ctx, id)
        return _item(memory.update(id, text=text))

    @_client_errors
    def forget(id: str, erase: bool = False, ctx: Context | None = None) -> dict[str, Any]:
        """Forget a memory: it stays visible to questions about the past, unless ``erase`` (the right to be
        forgotten: every version goes, at the store's next compaction; a forgotten memory may be erased)."""
        owned(ctx, id)
        if erase:
            memory.erase(id)
            return {"erased": id}
        memory.delete(id)  # an unknown or deleted id: UnknownId
        return {"forgotten": id}

    @_client_errors
    def history(id: str, ctx: Context | None = None) -> list[dict[str, Any]]:
        """Every version of a memory, oldest first."""
        current()
        owned(ctx, id)
        versions = memory.history(id)
        if not versions:
            raise UnknownId(id)
        return [_item(v) for v in versions]

    @_client_errors
    def consolidate(phases: list[str] | None = None, ctx: Context | None = None) -> dict[str, Any]:
        """Sleep: replay (nrem), form prototypes of episodes (rem), prune stale memories (prune)."""
        if not allows(principal(ctx), None):
            raise InvalidInput(
                "token", "<user token>", "consolidate touches every user: it needs an every-user token"
            )
        report = memory.consolidate(tuple(phases or ("nrem", "rem", "prune")), progress=False)
        return {
            "summary": report.summary(),
            "bands_after": report.bands_after,
            "prototypes": report.prototypes,
        }

    for tool in (remember, recall, revise, forget, history, consolidate):
        if writable or tool in (recall, history):
            server.tool()(tool)
    return server


def mcp_http_app(
    memory: Memory,
    *,
    token: str | None = None,
    tokens: dict[str, str] | str | os.PathLike[str] | None = None,
    **options: Any,
) -> Any:
    """The MCP server over ``memory`` as an ASGI app (streamable HTTP at ``/mcp``); with ``token`` (every user)
    and/or ``tokens`` (``{token: user_id}``, or a tokens file's path, watched) every request wants ``Authorization: Bearer <token>`` and acts for
    the token's user. ``options`` go to the SDK's ``streamable_http_app`` (``json_response``,
    ``stateless_http``, ``host`` for its DNS-rebinding protection, ...)."""
    table = Tokens(token, tokens)
    app = create_mcp_server(memory, tokens=table).streamable_http_app(**options)
    return BearerAuth(app, table) if table else app


def run_mcp(
    path: str,
    *,
    transport: str = "stdio",
    embedder: Any = None,
    token: str | None = None,
    tokens: dict[str, str] | str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8001,
    read_only: bool = False,
    **options: Any,
) -> None:
    """Open the memory at ``path`` and serve it over MCP until the client goes away (stdio) or until interrupted
    (streamable HTTP, on ``host``:``port``, behind ``token`` when given); the memory is closed after. With
    ``read_only`` it is served beside the process that writes it: ``recall`` and ``history`` only."""
    if transport not in ("stdio", "streamable-http"):
        raise InvalidInput("transport", transport, "expected 'stdio' or 'streamable-http'")
    table = Tokens(token, tokens)
    if transport == "stdio" and table:
        raise InvalidInput("token", "<given>", "a token guards the HTTP transport; stdio has no network side")
    memory = Memory(path, embedder=embedder, read_only=read_only)
    try:
        if transport == "stdio":
            create_mcp_server(memory).run("stdio")
        else:
            import uvicorn

            warn_if_open("mcp", host, port, table)
            app = mcp_http_app(memory, token=token, tokens=tokens, host=host, **options)
            uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        memory.close()
