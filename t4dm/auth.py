"""A bearer token in front of the memory's network servers (``t4dm serve``, ``t4dm mcp`` over HTTP).

One shared secret for the whole server: every request must carry ``Authorization: Bearer <token>``; the
comparison takes the same time however much of a guess is right (``hmac.compare_digest``). It keeps out whoever
can reach the port but has not been given the token; it does not tell users apart (each is still scoped by the
``user_id`` it sends). Serve over TLS (a reverse proxy) beyond a trusted network: the token travels in the clear
otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from t4dm.errors import InvalidInput

__all__ = ["BearerAuth", "bearer_matches", "check_token", "is_loopback", "warn_if_open"]

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(command: str, host: str, port: int, token: str | None) -> None:
    """Say on stderr when ``command`` listens beyond this machine without a token."""
    if token is None and not is_loopback(host):
        print(
            f"t4dm {command}: listening on {host} without a token: anyone who reaches port {port} can read and "
            "write every memory (give --token or T4DM_TOKEN)",
            file=sys.stderr,
        )


class BearerAuth:
    """ASGI middleware: HTTP requests without ``Authorization: Bearer <token>`` get 401 (a JSON body naming the
    header, ``WWW-Authenticate: Bearer``) and never reach ``app``; websockets without it are closed (policy
    violation, 1008); lifespan events pass through."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]], token: str) -> None:
        secret = check_token(token)
        assert secret is not None
        self.app = app
        self._secret = secret

    def _authorised(self, scope: _Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                return bearer_matches(value.decode("latin-1"), self._secret)
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
