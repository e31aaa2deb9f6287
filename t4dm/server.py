"""An HTTP API over one :class:`~t4dm.memory.Memory` (FastAPI): ``t4dm serve --path DIR``.

Every route is one SDK call, scoped by ``user_id`` / ``agent_id`` / ``run_id`` as the SDK scopes it:

==========  ==============================  ===========================================================
method      path                            SDK call
==========  ==============================  ===========================================================
POST        ``/memories``                   :meth:`Memory.add` → ``{"results": [AddResult, ...]}``
GET         ``/memories/{id}``              :meth:`Memory.get` (``?as_of=``) → the memory, or 404
PATCH       ``/memories/{id}``              :meth:`Memory.update` → the new version
DELETE      ``/memories/{id}``              :meth:`Memory.delete` → 204; ``?erase=true``: :meth:`Memory.erase`
DELETE      ``/memories``                   :meth:`Memory.delete_all` (``?user_id=`` ...) → ``{"deleted": n}``;
                                            ``&erase=true``: :meth:`Memory.erase_all` → ``{"erased": n}``
GET         ``/memories/{id}/history``      :meth:`Memory.history` → every version, oldest first
POST        ``/search``                     :meth:`Memory.search` → ``{"hits": [MemoryHit, ...]}``
POST        ``/search/batch``               :meth:`Memory.search_many` (``queries``) → ``{"results": [{"hits"}]}``
POST        ``/consolidate``                :meth:`Memory.consolidate` → the report
GET         ``/stats``                      :meth:`Memory.stats`
GET         ``/health``                     ``{"status": "ok", "memories": n}``
==========  ==============================  ===========================================================

With a token (``create_app(memory, token=...)``; ``t4dm serve --token`` or the ``T4DM_TOKEN`` variable) every
route asks for ``Authorization: Bearer <token>`` and answers 401 without it; the OpenAPI pages stay open.
Per-user tokens (``tokens={token: user_id}``, ``t4dm serve --tokens FILE``, a file read again when it
changes) each reach one user's memories: another ``user_id`` is 403 naming the field, another user's memory
by id 404, ``/consolidate`` and ``/stats`` (every user's) 403 (:mod:`t4dm.auth`). Without any token, anyone
who can reach the port reads and writes every user's memories: ``t4dm serve`` binds 127.0.0.1 by default and
warns when told to listen beyond this machine without a token.

Errors keep the SDK's types: bad input is 400 with ``{"error", "field", "value", "reason"}`` (the field
the SDK names), an unknown id 404; a request body of the wrong shape is FastAPI's 422. Times are ISO 8601
with a time zone (a naive time is refused, as in the SDK). The OpenAPI schema is at ``/docs``. Needs the
``server`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from t4dm.auth import UNAUTHORIZED_BODY, UNAUTHORIZED_HEADERS, Tokens, allows, warn_if_open
from t4dm.errors import InvalidInput, ReadOnlyStore, UnknownId
from t4dm.memory import Memory

__all__ = ["create_app", "serve"]


class Message(BaseModel):
    role: str | None = None
    content: str
    name: str | None = None
    speaker: str | None = None
    valid_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class Scope(BaseModel):
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None


class AddRequest(Scope):
    content: str | list[str] | list[Message]
    valid_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    kind: str = "episode"
    surprise: float = 0.0
    reward: float = 0.0
    dedup: bool = True
    link: bool | None = None


class UpdateRequest(BaseModel):
    text: str | None = None
    metadata: dict[str, Any] | None = None
    valid_at: datetime | None = None


class SearchOptions(Scope):
    k: int = 10
    valid_at: datetime | None = None
    as_of: datetime | None = None
    kind: str | list[str] | None = None
    policy: str | tuple[float, float] = "all"  # "all", "episodic", "consolidated", "semantic" or a κ range
    recency_half_life_days: float | None = None
    expand: bool = True


class SearchRequest(SearchOptions):
    query: str


class SearchBatchRequest(SearchOptions):
    queries: list[str]


class ConsolidateRequest(BaseModel):
    phases: list[Literal["nrem", "rem", "prune"]] = Field(default_factory=lambda: ["nrem", "rem", "prune"])


def _plain(value: Any) -> Any:
    """A dataclass (MemoryItem, MemoryHit, AddResult, ConsolidationReport) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return jsonable_encoder(value, custom_encoder={datetime: datetime.isoformat})


class _Unauthorized(Exception):
    pass


class _Forbidden(Exception):
    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.field, self.value, self.reason = field, value, reason


def create_app(
    memory: Memory,
    *,
    token: str | None = None,
    tokens: dict[str, str] | str | os.PathLike[str] | None = None,
    close_on_shutdown: bool = False,
    refresh_every: float = 1.0,
) -> FastAPI:
    """The API over ``memory``. With ``token`` (every user) and/or ``tokens`` (``{token: user_id}``, ``"*"`` for every
    user; or a tokens file's path, read again when it changes: :class:`~t4dm.auth.Tokens`) every route wants
    ``Authorization: Bearer <token>`` (401 otherwise), and a user's token reaches that user's memories only: another
    ``user_id`` is 403, another user's memory by id 404 (as if absent), ``/consolidate`` and ``/stats`` 403 (they
    touch every user). With ``close_on_shutdown`` the app closes the memory when it stops (``t4dm serve``).

    Over a memory opened ``read_only=True`` (a read replica beside the process that writes it) a request first
    catches up with the writer (:meth:`~t4dm.memory.Memory.refresh`) when the last catch-up is ``refresh_every``
    seconds old or more (0: every request; a catch-up with nothing new costs ~0.1 ms), and writes answer 403
    ``ReadOnlyStore``."""
    if (
        isinstance(refresh_every, bool)
        or not isinstance(refresh_every, (int, float))
        or not refresh_every >= 0
    ):
        raise InvalidInput("refresh_every", refresh_every, "expected seconds >= 0")
    table = Tokens(token, tokens)
    refreshed = [time.monotonic()]

    def current() -> None:
        if memory.read_only and time.monotonic() - refreshed[0] >= refresh_every:
            refreshed[0] = time.monotonic()
            memory.refresh()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        if close_on_shutdown:
            memory.close()

    def authorised(request: Request) -> None:
        if not table:
            request.state.principal = None
            return
        principal = table.principal(request.headers.get("authorization", ""))
        if principal is None:
            raise _Unauthorized
        request.state.principal = principal

    app = FastAPI(
        title="T4DM memory",
        version="1",
        lifespan=lifespan,
        dependencies=[Depends(authorised), Depends(current)],
    )

    def check_user(http: Request, user_id: str | None) -> None:
        principal = http.state.principal
        if not allows(principal, user_id):
            raise _Forbidden("user_id", user_id, f"this token is for user_id {principal!r} only")

    def check_every_user(http: Request, route: str) -> None:
        if not allows(http.state.principal, None):
            raise _Forbidden(
                "token", "<user token>", f"{route} touches every user: it needs an every-user token"
            )

    def owned(http: Request, item: Any) -> bool:
        return item is not None and allows(http.state.principal, item.user_id)

    @app.exception_handler(_Unauthorized)
    async def unauthorised(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(status_code=401, content=UNAUTHORIZED_BODY, headers=UNAUTHORIZED_HEADERS)

    @app.exception_handler(_Forbidden)
    async def forbidden(request: Request, exc: _Forbidden) -> JSONResponse:
        body = {"error": "Forbidden", "field": exc.field, "value": repr(exc.value), "reason": exc.reason}
        return JSONResponse(status_code=403, content=body)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        body = {
            "error": type(exc).__name__,
            "field": exc.field,
            "value": repr(exc.value),
            "reason": exc.reason,
        }
        return JSONResponse(status_code=400, content=body)

    @app.exception_handler(ReadOnlyStore)
    async def read_only(request: Request, exc: ReadOnlyStore) -> JSONResponse:
        body = {"error": "ReadOnlyStore", "field": "read_only", "value": True, "reason": str(exc)}
        return JSONResponse(status_code=403, content=body)

    @app.exception_handler(UnknownId)
    async def unknown_id(request: Request, exc: UnknownId) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "UnknownId", "reason": str(exc)})

    def not_found(id: str) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "UnknownId", "reason": f"no memory {id!r}"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "memories": len(memory)}

    @app.post("/memories")
    def add(request: AddRequest, http: Request) -> dict[str, Any]:
        check_user(http, request.user_id)
        content: Any = request.content
        if isinstance(content, list) and content and isinstance(content[0], Message):
            content = [m.model_dump(exclude_none=True) for m in content]
        results = memory.add(
            content,
            user_id=request.user_id,
            agent_id=request.agent_id,
            run_id=request.run_id,
            valid_at=request.valid_at,
            metadata=request.metadata,
            kind=request.kind,
            surprise=request.surprise,
            reward=request.reward,
            dedup=request.dedup,
            link=request.link,
        )
        return {"results": [_plain(r) for r in results]}

    @app.get("/memories/{id}", response_model=None)
    def get(id: str, http: Request, as_of: datetime | None = None) -> Any:
        item = memory.get(id, as_of=as_of)
        return _plain(item) if owned(http, item) else not_found(id)

    @app.patch("/memories/{id}")
    def update(id: str, request: UpdateRequest, http: Request) -> Any:
        if not owned(http, memory.get(id)):
            return not_found(id)
        return _plain(
            memory.update(id, text=request.text, metadata=request.metadata, valid_at=request.valid_at)
        )

    @app.delete("/memories/{id}", status_code=204, response_model=None)
    def delete(id: str, http: Request, erase: bool = False) -> Any:
        if erase:  # every version, a deleted memory's too: the owner is the last version's
            versions = memory.history(id)
            if not versions or not owned(http, versions[-1]):
                return not_found(id)
            memory.erase(id)
            return Response(status_code=204)
        if not owned(http, memory.get(id)):
            return not_found(id)
        memory.delete(id)
        return Response(status_code=204)

    @app.delete("/memories")
    def delete_all(
        http: Request,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        erase: bool = False,
    ) -> Any:
        check_user(http, user_id)
        if erase:
            return {"erased": memory.erase_all(user_id=user_id, agent_id=agent_id, run_id=run_id)}
        return {"deleted": memory.delete_all(user_id=user_id, agent_id=agent_id, run_id=run_id)}

    @app.get("/memories/{id}/history")
    def history(id: str, http: Request) -> Any:
        versions = memory.history(id)
        return [_plain(v) for v in versions] if versions and owned(http, versions[0]) else not_found(id)

    def search_options(request: SearchOptions, http: Request) -> dict[str, Any]:
        check_user(http, request.user_id)
        days = request.recency_half_life_days
        if days is not None and not days > 0:
            raise InvalidInput("recency_half_life_days", days, "must be > 0")
        return {
            "user_id": request.user_id,
            "agent_id": request.agent_id,
            "run_id": request.run_id,
            "k": request.k,
            "valid_at": request.valid_at,
            "as_of": request.as_of,
            "kind": request.kind,
            "policy": request.policy,
            "recency_half_life": None if days is None else timedelta(days=days),
            "expand": request.expand,
        }

    @app.post("/search")
    def search(request: SearchRequest, http: Request) -> dict[str, Any]:
        hits = memory.search(request.query, **search_options(request, http))
        return {"hits": [_plain(h) for h in hits]}

    @app.post("/search/batch")
    def search_batch(request: SearchBatchRequest, http: Request) -> dict[str, Any]:
        found = memory.search_many(request.queries, **search_options(request, http))
        return {"results": [{"hits": [_plain(h) for h in hits]} for hits in found]}

    @app.post("/consolidate")
    def consolidate(http: Request, request: ConsolidateRequest | None = None) -> Any:
        check_every_user(http, "/consolidate")
        phases = tuple((request or ConsolidateRequest()).phases)
        return _plain(memory.consolidate(phases, progress=False))

    @app.get("/stats")
    def stats(http: Request) -> Any:
        check_every_user(http, "/stats")
        return _plain(memory.stats())

    return app


def serve(
    path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    embedder: Any = None,
    token: str | None = None,
    tokens: dict[str, str] | str | os.PathLike[str] | None = None,
    read_only: bool = False,
    refresh_every: float = 1.0,
) -> None:
    """Open the memory at ``path`` and serve it until interrupted (uvicorn); the memory is closed after.
    ``token``, ``tokens``, ``refresh_every``: see :func:`create_app`; ``read_only``: serve it beside the
    process that writes it (a read replica)."""
    import uvicorn

    table = Tokens(token, tokens)
    warn_if_open("serve", host, port, table)
    memory = Memory(path, embedder=embedder, read_only=read_only)
    app = create_app(memory, token=token, tokens=tokens, close_on_shutdown=True, refresh_every=refresh_every)
    uvicorn.run(app, host=host, port=port, log_level="info")
