"""Connect to Ray once, at the entry point: a local cluster by default, or ``ray.address``.

Only the commands (``pipelines.cli``) call this, so it may print the one line that says where
Ray's logs went.

What reaches the terminal: the workers (actors, tasks, Serve's controller, proxy and replicas)
log at the command's level, WARNING unless ``-v``, so their INFO lines stay in the Ray
session's log folder while warnings a user must act on still show. Ray's colour codes are
left out when stderr is no terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import ray

from conf import Config
from pipelines.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # a head's port that takes longer than this to accept is unreachable
_DEFAULT_PORTS = {"": 6379, "ray": 10001}  # the head's GCS; the Ray Client server
_ADDRESS_FORMS = (
    "host:port of the head's GCS (e.g. 10.0.0.5:6379), auto on a node of the cluster, "
    "ray://head:10001 (Ray Client), or null for a local cluster"
)


def init_ray(cfg: Config) -> bool:
    """Connect; True if this call started/joined Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    verbose = logging.getLogger().isEnabledFor(logging.INFO)  # the command's -v
    level = "INFO" if verbose else "WARNING"
    kwargs: dict[str, Any] = {
        "namespace": cfg.ray.namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,  # the workers' warnings and errors must still be seen
        "logging_config": ray.LoggingConfig(encoding="TEXT", log_level=level),
    }
    for key, value in ray_env(verbose=verbose, tty=_tty()).items():
        os.environ.setdefault(key, value)  # a variable the user set wins
    quiet_serve_driver_logs(verbose)
    if cfg.ray.address:
        check_reachable(cfg.ray.address)
        kwargs["address"] = cfg.ray.address
    else:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    try:
        with _kept_signal_handlers():
            context = ray.init(**kwargs)
    except ConnectionError as exc:  # "auto" with no cluster here, Ray Client refused, ...
        if not cfg.ray.address:
            raise
        if _refused_token(exc):
            raise ClusterError(
                f"ray.address={cfg.ray.address!r}: the cluster has Ray's token authentication "
                "on and refused this client's token (none, or not the cluster's). Set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or "
                "~/.ray/auth_token) to the token the cluster's nodes were started with"
            ) from exc
        raise ClusterError(
            f"ray.address={cfg.ray.address!r}: Ray could not join that cluster: {exc}. "
            f"Check that the cluster runs (ray status), or set ray.address to {_ADDRESS_FORMS}"
        ) from exc
    session = context.address_info.get("session_dir") if context is not None else None
    if session:
        extra = "" if verbose else "  (-v shows their INFO lines here too)"
        print(f"Ray logs (actors, tasks, Serve): {session}/logs{extra}", file=sys.stderr)
    return True


def _refused_token(exc: BaseException) -> bool:
    """True when Ray's connect failed because the GCS refused the token: its ConnectionError
    wraps a RuntimeError whose text carries the ``AuthenticationError``."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain, bounded: causes can loop
        if seen is None:
            break
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """``ClusterError`` naming ``ray.address`` when nothing accepts a connection there, or
    what does is no Ray head (a wrong port: the dashboard's, another service's).

    Ray's own connect retries an unreachable GCS 20 times, about 36 s each: some 12 minutes
    of warnings before its error, and the same for a port that answers but not in gRPC. One
    TCP connect answers within ``timeout_s`` (at once when refused), and the HTTP/2 preface
    tells a gRPC server from any other. "auto" is left to Ray, which looks up this node's
    cluster and says at once when there is none.
    """
    if address == "auto":
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            answer = _grpc_answer(sock) if not _ray_tls() else _H2_SETTINGS
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterError(
            f"ray.address={address!r}: nothing answers at {host}:{port} ({why}). Start the "
            f"cluster's head there (ray start --head --port={port}), or set ray.address to "
            f"{_ADDRESS_FORMS}"
        ) from exc
    if answer != _H2_SETTINGS:
        # Ray would retry this for the same ~12 minutes as an unreachable address
        raise ClusterError(
            f"ray.address={address!r}: something answers at {host}:{port}, but not a Ray head "
            f"(it does not speak gRPC; its first bytes: {answer!r}). Use the port the head's "
            "GCS listens on (ray start --head --port, 6379 by default; 8265 is the "
            f"dashboard's, for ray job), or set ray.address to {_ADDRESS_FORMS}"
        )


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_SETTINGS = b"settings"  # what _grpc_answer returns for a gRPC server


def _grpc_answer(sock: socket.socket) -> bytes:
    """``_H2_SETTINGS`` when the server speaks HTTP/2 as gRPC does (the GCS, the Ray Client
    server), else the first bytes it sent back (b"" when it closed or said nothing in time).

    An HTTP/2 server's first frame is SETTINGS: a 9-byte header whose 4th byte is type 4.
    """
    sock.sendall(_H2_PREFACE)
    got = b""
    try:
        while len(got) < 9:
            chunk = sock.recv(9 - len(got))
            if not chunk:
                break
            got += chunk
    except OSError:  # a timeout or a reset: not a gRPC server
        pass
    return _H2_SETTINGS if len(got) == 9 and got[3] == 4 else got[:40]


def _ray_tls() -> bool:
    """Ray with TLS (``RAY_USE_TLS``): the GCS speaks TLS first, so the plain probe is skipped."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _host_port(address: str) -> tuple[str, int]:
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or "]" in port:  # no port: Ray's default for the form
        host, port = rest.rstrip("/"), str(_DEFAULT_PORTS.get(scheme, 6379))
    if not port.isdigit() or not 1 <= int(port) <= 65535 or not host.strip("[]"):
        raise ConfigError(f"ray.address={address!r} is not an address; use {_ADDRESS_FORMS}")
    return host.strip("[]"), int(port)


def ray_env(*, verbose: bool, tty: bool) -> dict[str, str]:
    """The RAY_* variables that keep Ray's routine output off the terminal.

    Set in this process before ``ray.init``: a local cluster's workers inherit them (a remote
    cluster's workers keep their own environment).
    """
    env: dict[str, str] = {}
    if not tty:
        env["RAY_COLOR_PREFIX"] = "0"  # no ANSI codes in a log file or a pipe
    if not verbose:
        # Serve's components log to their own files in the session folder; stderr would bring
        # every "(ServeController pid=…) INFO" line to the terminal
        env["RAY_SERVE_LOG_TO_STDERR"] = "0"
    return env


AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _TokenAuthOnNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this")


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_serve_driver_logs(verbose: bool) -> None:
    """Serve's logger in this process ("Started Serve", "Deploying …") keeps only warnings,
    and Ray's notice that a new local cluster has token auth on (its default; nothing to do)
    is dropped, unlike its warning that auth is off.

    Filters, not levels: importing ``ray.serve`` resets that logger's level and handlers, not
    its filters.
    """
    for name, kind in (("ray.serve", _BelowWarning), (AUTH_LOGGER, _TokenAuthOnNotice)):
        logger = logging.getLogger(name)
        ours = [f for f in logger.filters if isinstance(f, kind)]
        if verbose:
            for f in ours:
                logger.removeFilter(f)
        elif not ours:
            logger.addFilter(kind())


def _tty() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """Around ``ray.init``, which sets SIGTERM to ``sys.exit`` and lets its core worker add a
    fatal-signal handler that aborts the process: both cut short a command's cleanup, so the
    Python handlers that were installed (``pipelines.cli.signals``) come back afterwards.
    Default and ignored dispositions are left as Ray set them (a library caller keeps Ray's).
    """
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    kept = {s: h for s in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(s))}
    try:
        yield
    finally:
        for s, h in kept.items() if main else ():
            signal.signal(s, h)
