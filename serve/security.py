"""The Serve app's security defaults, as plain code the ingress wires in.

- Bind 127.0.0.1 unless told otherwise; a non-loopback host without ``serve.token`` is refused
  at start (``check_security``), because every state-changing route would be open to the
  network. A token shorter than ``MIN_TOKEN_CHARS`` (or of a few repeated characters) is
  refused there too.
- Only requests whose ``Host`` header names this server are served (``HostPolicy``): the
  loopback names, ``serve.host`` and ``serve.allowed_hosts``. A page on another name that
  resolves to 127.0.0.1 (DNS rebinding) is same-origin with the API in the browser; this is
  what stops it, with or without a token.
- With a token, every method that changes state (anything but GET/HEAD/OPTIONS) needs
  ``Authorization: Bearer <token>``, compared in constant time; the token is never logged,
  echoed or put in an error message.
- Bodies past ``serve.max_request_bytes`` are refused with 413: by ``Content-Length`` before
  they are read, and a chunked body as it arrives (counted, never buffered past the cap). A
  body not received in full within ``serve.body_timeout_s`` gets 408 (a slow sender cannot
  hold a request open).
- CORS stays closed unless ``serve.cors_origins`` lists origins.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conf import ServeConfig
from pipelines.errors import ConfigError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
MIN_TOKEN_CHARS = 16
MIN_TOKEN_DISTINCT = 6  # "aaaaaaaaaaaaaaaa" is long, not secret
MAKE_TOKEN = (
    "make one with `openssl rand -hex 16 > ~/.candleray-token` and pass "
    "serve.token_file=~/.candleray-token (or set CANDLERAY_SERVE_TOKEN)"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback host without a token (ConfigError names the fix)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"serve.host={host!r} is reachable from other machines and serve.token is not set: "
            "every route that changes state (training, sessions, checkpoints) would be open. "
            f"Set a token ({MAKE_TOKEN}) or bind serve.host=127.0.0.1"
        )


def check_token(token: str | None) -> None:
    """Refuse a guessable token; the message never contains the token itself."""
    if token is None:
        return
    if len(token) < MIN_TOKEN_CHARS or len(set(token)) < MIN_TOKEN_DISTINCT:
        raise ConfigError(
            f"serve.token is too weak ({len(token)} characters, {len(set(token))} different): "
            f"use at least {MIN_TOKEN_CHARS} random characters; {MAKE_TOKEN}"
        )


def host_name(header: str | None) -> str | None:
    """The name in a ``Host`` header (no port, lower case, no trailing dot); None if malformed."""
    if not header:
        return None
    h = header.strip().lower()
    if h.startswith("["):  # [v6] or [v6]:port
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not h[end + 1 :].startswith(":")):
            return None
        name = h[1:end]
    elif h.count(":") == 1:
        name, _, port = h.partition(":")
        if port and not port.isdigit():
            return None
    elif ":" in h:  # a bare v6 address, as some clients send it
        name = h
    else:
        name = h
    name = name.rstrip(".")
    if not name or any(c.isspace() or c in "/\\@?#" for c in name):
        return None
    return name


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` headers are served: ``names``, any loopback address, any IP address when
    bound to all interfaces (an IP literal cannot come from a rebinding name), or any at all
    with ``"*"`` (for a proxy in front that checks Host itself)."""

    names: frozenset[str]
    any_ip: bool = False
    any_name: bool = False

    @classmethod
    def of(cls, s: ServeConfig) -> HostPolicy:
        names = set(LOOPBACK_NAMES)
        for entry in s.allowed_hosts:
            if entry == "*":
                continue
            name = host_name(entry)
            if name is None or name != entry.strip().lower().rstrip(".") or name == "*":
                raise ConfigError(
                    f"serve.allowed_hosts entry {entry!r} is not a host name: give names or IP "
                    "addresses without scheme or port, e.g. serve.allowed_hosts=[my-box.lan], "
                    'or "*" for any'
                )
            names.add(name)
        if s.host not in WILDCARD_BINDS and not is_loopback(s.host):
            names.add(s.host.lower())
        return cls(frozenset(names), s.host in WILDCARD_BINDS, "*" in s.allowed_hosts)

    def allows(self, header: str | None) -> bool:
        name = host_name(header)
        if name is None:
            return False
        if self.any_name or name in self.names or is_loopback(name):
            return True
        return self.any_ip and _is_ip(name)


def check_security(s: ServeConfig) -> None:
    """Everything about ``serve.*`` security that can be wrong before anything starts."""
    check_token(s.token)
    check_bind(s.host, s.token)
    HostPolicy.of(s)


def bearer_ok(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _Gone(Exception):
    """The client disconnected while sending its body: nobody to answer."""


class Guard:
    """ASGI middleware: 400 for a foreign Host, 413 past ``max_request_bytes``, 401 for a
    state change without the token, 408 for a body that does not arrive in time.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs every request in an
    extra task behind wrapped streams (about a third of the ingress's time per ``/predict``
    in a profile); a GET that passes costs a few header lookups. A request with a body has it
    read here (at most ``max_request_bytes``, within ``body_timeout_s``) and replayed to the
    app, so neither the cap nor the deadline depends on ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, serve: ServeConfig) -> None:
        self.app = app
        self.token = serve.token
        self.max_bytes = serve.max_request_bytes
        self.body_timeout_s = serve.body_timeout_s
        self.hosts = HostPolicy.of(serve)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refused = self.refusal(scope, headers)
        if refused is None and (
            scope["method"] not in SAFE_METHODS or "transfer-encoding" in headers
        ):
            try:
                body = await self._read_body(receive)
            except _Gone:
                return
            if isinstance(body, Response):
                refused = body
            else:
                receive = _replay(body, receive)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers) -> Response | None:
        host = headers.get("host")
        if not self.hosts.allows(host):
            shown = (host or "")[:100]
            return _refuse(
                400,
                f"Host {shown!r} is not a name this server answers to (only "
                f"{', '.join(sorted(self.hosts.names))}); a page on another name that points "
                "here is refused (DNS rebinding). To serve this name, the operator adds it to "
                "serve.allowed_hosts",
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return self._too_large(f"a request body of {length} bytes")
        method = scope["method"]
        if (
            self.token
            and method not in SAFE_METHODS
            and not bearer_ok(headers.get("authorization"), self.token)
        ):
            return _refuse(
                401,
                f"{method} {scope['path']} changes state and needs the header "
                "'Authorization: Bearer <token>' with this server's token (serve.token)",
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    def _too_large(self, what: str) -> Response:
        return _refuse(
            413,
            f"{what} is over the limit of {self.max_bytes} bytes (serve.max_request_bytes); "
            "send less data per request",
        )

    async def _read_body(self, receive: Receive) -> bytes | Response:
        """The whole body, or the refusal (413 past the cap, 408 past the deadline)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Gone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:  # stop reading: the rest is never taken in
                        return self._too_large(f"the request body (more than {size} bytes)")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return _refuse(
                408,
                f"the request body did not arrive in full within {self.body_timeout_s:g} s "
                "(serve.body_timeout_s); send it at once",
                {"Connection": "close"},
            )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body read already, then the client's own messages
    (a later disconnect still reaches the app)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
