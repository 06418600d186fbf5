"""The Serve app's security defaults, as plain code the ingress wires in.

- Bind 127.0.0.1 unless told otherwise; a non-loopback host without ``serve.token`` is refused
  at start (``check_bind``), because every state-changing route would be open to the network.
- With a token, every method that changes state (anything but GET/HEAD/OPTIONS) needs
  ``Authorization: Bearer <token>``, compared in constant time; the token is never logged,
  echoed or put in an error message.
- Bodies past ``serve.max_request_bytes`` are refused with 413 before they are read.
- CORS stays closed unless ``serve.cors_origins`` lists origins.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.errors import ConfigError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback host without a token (ConfigError names the fix)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"serve.host={host!r} is reachable from other machines and serve.token is not set: "
            "every route that changes state (training, sessions, checkpoints) would be open. "
            "Set serve.token (e.g. serve.token=$(openssl rand -hex 16)) or bind serve.host=127.0.0.1"
        )


def bearer_ok(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())


class Guard:
    """ASGI middleware: 413 past ``max_bytes``, 401 for a state change without the token.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs every request in an
    extra task behind wrapped streams (about a third of the ingress's time per ``/predict``
    in a profile); here a request that passes costs two header lookups.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_bytes: int) -> None:
        self.app, self.token, self.max_bytes = app, token, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return JSONResponse(
                {
                    "detail": f"request body of {length} bytes is over the limit of "
                    f"{self.max_bytes} (serve.max_request_bytes); send less data per request"
                },
                status_code=413,
            )
        method = scope["method"]
        if (
            self.token
            and method not in SAFE_METHODS
            and not bearer_ok(headers.get("authorization"), self.token)
        ):
            return JSONResponse(
                {
                    "detail": f"{method} {scope['path']} changes state and needs "
                    "'Authorization: Bearer <token>' with the token configured as serve.token"
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None
