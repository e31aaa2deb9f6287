"""An HTTP API over one :class:`~t4dm.memory.Memory` (FastAPI): ``t4dm serve --path DIR``.

Every route is one SDK call, scoped by ``user_id`` / ``agent_id`` / ``run_id`` as the SDK scopes it:

==========  ==============================  ===========================================================
method      path                            SDK call
==========  ==============================  ===========================================================
POST        ``/memories``                   :meth:`Memory.add` → ``{"results": [AddResult, ...]}``
GET         ``/memories/{id}``              :meth:`Memory.get` (``?as_of=``) → the memory, or 404
PATCH       ``/memories/{id}``              :meth:`Memory.update` → the new version
DELETE      ``/memories/{id}``              :meth:`Memory.delete` → 204
DELETE      ``/memories``                   :meth:`Memory.delete_all` (``?user_id=`` ...) → ``{"deleted": n}``
GET         ``/memories/{id}/history``      :meth:`Memory.history` → every version, oldest first
POST        ``/search``                     :meth:`Memory.search` → ``{"hits": [MemoryHit, ...]}``
POST        ``/consolidate``                :meth:`Memory.consolidate` → the report
GET         ``/stats``                      :meth:`Memory.stats`
GET         ``/health``                     ``{"status": "ok", "memories": n}``
==========  ==============================  ===========================================================

With a token (``create_app(memory, token=...)``; ``t4dm serve --token`` or the ``T4DM_TOKEN`` variable) every
route asks for ``Authorization: Bearer <token>`` and answers 401 without it; the OpenAPI pages stay open.
Without one, anyone who can reach the port reads and writes every user's memories: ``t4dm serve`` binds
127.0.0.1 by default and warns when told to listen beyond this machine without a token.

Errors keep the SDK's types: bad input is 400 with ``{"error", "field", "value", "reason"}`` (the field
the SDK names), an unknown id 404; a request body of the wrong shape is FastAPI's 422. Times are ISO 8601
with a time zone (a naive time is refused, as in the SDK). The OpenAPI schema is at ``/docs``. Needs the
``server`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from t4dm.auth import UNAUTHORIZED_BODY, UNAUTHORIZED_HEADERS, bearer_matches, check_token, warn_if_open
from t4dm.errors import InvalidInput, UnknownId
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


class SearchRequest(Scope):
    query: str
    k: int = 10
    valid_at: datetime | None = None
    as_of: datetime | None = None
    kind: str | list[str] | None = None
    policy: str | tuple[float, float] = "all"  # "all", "episodic", "consolidated", "semantic" or a κ range
    recency_half_life_days: float | None = None
    expand: bool = True


class ConsolidateRequest(BaseModel):
    phases: list[Literal["nrem", "rem", "prune"]] = Field(default_factory=lambda: ["nrem", "rem", "prune"])


def _plain(value: Any) -> Any:
    """A dataclass (MemoryItem, MemoryHit, AddResult, ConsolidationReport) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return jsonable_encoder(value, custom_encoder={datetime: datetime.isoformat})


class _Unauthorized(Exception):
    pass


def create_app(memory: Memory, *, token: str | None = None, close_on_shutdown: bool = False) -> FastAPI:
    """The API over ``memory``; with ``token`` every route wants ``Authorization: Bearer <token>``; with
    ``close_on_shutdown`` the app closes the memory when it stops (``t4dm serve``)."""
    secret = check_token(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        if close_on_shutdown:
            memory.close()

    def authorised(request: Request) -> None:
        if secret is None:
            return
        if not bearer_matches(request.headers.get("authorization", ""), secret):
            raise _Unauthorized

    app = FastAPI(title="T4DM memory", version="1", lifespan=lifespan, dependencies=[Depends(authorised)])

    @app.exception_handler(_Unauthorized)
    async def unauthorised(request: Request, exc: _Unauthorized) -> JSONResponse:
        return JSONResponse(status_code=401, content=UNAUTHORIZED_BODY, headers=UNAUTHORIZED_HEADERS)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        body = {
            "error": type(exc).__name__,
            "field": exc.field,
            "value": repr(exc.value),
            "reason": exc.reason,
        }
        return JSONResponse(status_code=400, content=body)

    @app.exception_handler(UnknownId)
    async def unknown_id(request: Request, exc: UnknownId) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "UnknownId", "reason": str(exc)})

    def not_found(id: str) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "UnknownId", "reason": f"no memory {id!r}"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "memories": len(memory)}

    @app.post("/memories")
    def add(request: AddRequest) -> dict[str, Any]:
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
    def get(id: str, as_of: datetime | None = None) -> Any:
        item = memory.get(id, as_of=as_of)
        return not_found(id) if item is None else _plain(item)

    @app.patch("/memories/{id}")
    def update(id: str, request: UpdateRequest) -> Any:
        return _plain(
            memory.update(id, text=request.text, metadata=request.metadata, valid_at=request.valid_at)
        )

    @app.delete("/memories/{id}", status_code=204, response_model=None)
    def delete(id: str) -> Any:
        memory.delete(id)  # an unknown or deleted id: UnknownId, 404
        return Response(status_code=204)

    @app.delete("/memories")
    def delete_all(user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None) -> Any:
        return {"deleted": memory.delete_all(user_id=user_id, agent_id=agent_id, run_id=run_id)}

    @app.get("/memories/{id}/history")
    def history(id: str) -> Any:
        versions = memory.history(id)
        return not_found(id) if not versions else [_plain(v) for v in versions]

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        days = request.recency_half_life_days
        if days is not None and not days > 0:
            raise InvalidInput("recency_half_life_days", days, "must be > 0")
        hits = memory.search(
            request.query,
            user_id=request.user_id,
            agent_id=request.agent_id,
            run_id=request.run_id,
            k=request.k,
            valid_at=request.valid_at,
            as_of=request.as_of,
            kind=request.kind,
            policy=request.policy,
            recency_half_life=None if days is None else timedelta(days=days),
            expand=request.expand,
        )
        return {"hits": [_plain(h) for h in hits]}

    @app.post("/consolidate")
    def consolidate(request: ConsolidateRequest | None = None) -> Any:
        phases = tuple((request or ConsolidateRequest()).phases)
        return _plain(memory.consolidate(phases, progress=False))

    @app.get("/stats")
    def stats() -> Any:
        return _plain(memory.stats())

    return app


def serve(
    path: str, *, host: str = "127.0.0.1", port: int = 8000, embedder: Any = None, token: str | None = None
) -> None:
    """Open the memory at ``path`` and serve it until interrupted (uvicorn); the memory is closed after.
    ``token``: see :func:`create_app`."""
    import uvicorn

    check_token(token)
    warn_if_open("serve", host, port, token)
    memory = Memory(path, embedder=embedder)
    app = create_app(memory, token=token, close_on_shutdown=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
