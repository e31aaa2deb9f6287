"""Bearer tokens in front of the memory's network servers (``t4dm serve``, ``t4dm mcp`` over HTTP).

Every request must carry ``Authorization: Bearer <token>``; the comparison takes the same time however much of
a guess is right (``hmac.compare_digest``). A token is for every user (``token=``, ``--token``: the operator's) or
for one ``user_id`` (``tokens={token: user_id}``, ``--tokens FILE``: each agent or user its own); a user's token
reads and writes that user's memories only, and the calls that touch every user (consolidation, statistics) need
an every-user token (:func:`allows`). Serve over TLS (a reverse proxy) beyond a trusted network: tokens travel in
the clear otherwise.

A tokens *file* (``tokens="path.json"``, ``--tokens FILE``) is watched: each request checks the file's
modification time, size and inode (one ``stat``), and a changed file is read again, so tokens are issued and
revoked without a restart. A new file that cannot be used (unreadable, not JSON, a bad entry) leaves the tables
as they were and says why on stderr, once per version of the file; so does a file that disappears.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from t4dm.errors import InvalidInput

__all__ = [
    "ALL_USERS",
    "BearerAuth",
    "Tokens",
    "allows",
    "bearer_matches",
    "check_token",
    "is_loopback",
    "load_tokens",
    "warn_if_open",
]

#: The principal of a token for every user (``token=``; ``"*"`` in a tokens file).
ALL_USERS = "*"

#: The body and headers of a refused request.
UNAUTHORIZED_BODY = {"error": "Unauthorized", "reason": "expected the header Authorization: Bearer <token>"}
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def check_token(token: Any) -> bytes | None:
    """``token`` as bytes, None for no token; :class:`InvalidInput` naming ``token`` for anything but a non-empty
    string."""
    if token is None:
        return None
    if not isinstance(token, str) or not token.strip():
        raise InvalidInput(
            "token", token if not isinstance(token, str) else "<empty>", "expected a non-empty string"
        )
    return token.encode()


def bearer_matches(authorization: str, secret: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <secret>`` (scheme in any case)."""
    scheme, _, given = authorization.partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), secret)


class Tokens:
    """The tokens a server accepts and whom each speaks for: ``token`` for every user, ``tokens`` maps a token
    to one ``user_id`` (or to ``"*"``, every user), or is the path of a tokens file (:func:`load_tokens`), read
    again whenever it changes. Empty when neither is given: the server is open."""

    def __init__(
        self, token: str | None = None, tokens: Mapping[str, str] | str | os.PathLike[str] | None = None
    ) -> None:
        self._secret = check_token(token)
        self._path: str | None = None
        if isinstance(tokens, (str, os.PathLike)):
            self._path = os.fspath(tokens)
            self._stamp = _stamp(self._path)
            tokens = load_tokens(self._path)
        self._table = self._build(tokens)

    def _build(self, tokens: Mapping[str, str] | None) -> list[tuple[bytes, str]]:
        table: list[tuple[bytes, str]] = []
        if self._secret is not None:
            table.append((self._secret, ALL_USERS))
        if tokens is not None:
            if not isinstance(tokens, Mapping):
                raise InvalidInput(
                    "tokens", tokens, "expected a mapping of token to user_id, or a tokens file"
                )
            for key, user in tokens.items():
                table.append((check_token(key), _check_user(user)))  # type: ignore[arg-type]
        if len({secret for secret, _ in table}) != len(table):
            raise InvalidInput("tokens", "<a repeated token>", "each token may speak for one principal only")
        return table

    def __bool__(self) -> bool:
        return bool(self._table)

    def refresh(self) -> bool:
        """Read the tokens file again if it changed since it was last read; returns whether the tables changed.
        A file that cannot be used keeps the tables as they are (said on stderr once per version of the file)."""
        if self._path is None:
            return False
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            table = self._build(load_tokens(self._path))
        except InvalidInput as exc:
            print(f"t4dm: the tokens file changed but cannot be used; the tokens stay as they were: {exc}",
                  file=sys.stderr)  # fmt: skip
            return False
        self._table = table  # one assignment: a request sees the old table or the new one
        return True

    def principal(self, authorization: str) -> str | None:
        """The user (or :data:`ALL_USERS`) whose token an ``Authorization`` header carries; None for none.
        Every entry is compared (the time taken does not tell which one nearly matched)."""
        self.refresh()
        found = None
        for secret, user in self._table:
            if bearer_matches(authorization, secret) and found is None:
                found = user
        return found


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What tells that a file changed: its modification time, size and inode (None when it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _check_user(user: Any) -> str:
    if not isinstance(user, str) or not user:
        raise InvalidInput(
            "tokens", user, "expected each token's user_id as a non-empty string ('*': every user)"
        )
    return user


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """A tokens file: a JSON object ``{"<token>": "<user_id>", ...}`` (``"*"`` for every user)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            "tokens", str(path), f"expected a readable JSON file of token -> user_id: {exc}"
        ) from exc
    if not isinstance(tokens, dict) or not tokens:
        raise InvalidInput("tokens", str(path), "expected a non-empty JSON object of token -> user_id")
    Tokens(tokens=tokens)  # every entry checked here, before a server starts
    return tokens


def allows(principal: str | None, user_id: str | None) -> bool:
    """Whether ``principal`` (None: an open server) may act on ``user_id``'s memories (None: every user's)."""
    return principal is None or principal in (ALL_USERS, user_id)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(command: str, host: str, port: int, token: Any) -> None:
    """Say on stderr when ``command`` listens beyond this machine without a token (``token``: anything that is
    None or false when there is none)."""
    if not token and not is_loopback(host):
        print(
            f"t4dm {command}: listening on {host} without a token: anyone who reaches port {port} can read and "
            "write every memory (give --token or T4DM_TOKEN)",
            file=sys.stderr,
        )


class BearerAuth:
    """ASGI middleware: HTTP requests without ``Authorization: Bearer <one of the tokens>`` get 401 (a JSON body
    naming the header, ``WWW-Authenticate: Bearer``) and never reach ``app``; websockets without it are closed
    (policy violation, 1008); lifespan events pass through. Whom a token speaks for is the app's to check
    (:meth:`Tokens.principal`)."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], tokens: Tokens) -> None:
        if not tokens:
            raise InvalidInput("tokens", "<none>", "BearerAuth needs at least one token")
        self.app = app
        self._tokens = tokens

    def _authorised(self, scope: _Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                return self._tokens.principal(value.decode("latin-1")) is not None
        return False

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(UNAUTHORIZED_BODY).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in UNAUTHORIZED_HEADERS.items()]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
