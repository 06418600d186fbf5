"""Helpers of the MLflow tracker: sqlite store paths and locking, error codes, text limits."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: no lock; start the first process alone on a fresh store
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("pipelines.tracking.tracker")

T = TypeVar("T")

_CUT_MARK = "..."
# Errors that may pass on a later flush; anything else (a bad key, a refused value) never will.
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}


def _sqlite_path(uri: str) -> Path | None:
    """The db file of a sqlite URI, its folder created; None for other stores.

    The experiment's artifacts then go to ``<db folder>/artifacts``: MLflow 3 would root them
    at ``./mlruns`` of whatever the creating process's cwd was. A tracking server chooses its
    own artifact location.
    """
    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database  # sqlite:///rel.db → rel.db, sqlite:////abs.db → /abs.db
    if not database or database == ":memory:":
        return None
    path = Path(database).resolve()  # relative to cwd, as SQLAlchemy reads it
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _init_lock(db_path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.init.lock`` (POSIX; elsewhere no lock)."""
    if db_path is None or fcntl is None:
        yield
        return
    with open(db_path.with_name(db_path.name + ".init.lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _param_text(key: str, value: object, limit: int) -> str:
    text = str(value)
    if len(text) > limit:
        logger.warning(
            "MLflow param %r is %d characters; logging its first %d",
            key,
            len(text),
            limit - len(_CUT_MARK),
        )
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_CUT_MARK)] + _CUT_MARK


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _error_code(exc: BaseException | None) -> str | None:
    return exc.error_code if isinstance(exc, MlflowException) else None


def _is_transient(exc: BaseException | None) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return exc is not None


def _redact(uri: str) -> str:
    """The URI without a password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# MLflow already waits 20 s on a busy sqlite file (PRAGMA busy_timeout); a write that still
# finds it locked (e.g. a reader upgrading to a writer) gets these few extra tries.
_LOCK_RETRY_DELAYS_S = (0.2, 0.5, 1.0)
_BACKEND_ERRORS = (
    MlflowException,
    requests.exceptions.RequestException,
    sqlalchemy.exc.SQLAlchemyError,
    OSError,
)


def call_mlflow(uri: str, operation: str, fn: Callable[[], T]) -> T:
    """The one choke point: run ``fn``; retry sqlite locks; any failure becomes TrackingError."""
    from pipelines.errors import TrackingError

    for delay in (*_LOCK_RETRY_DELAYS_S, None):
        try:
            return fn()
        except _BACKEND_ERRORS as exc:
            if delay is not None and "database is locked" in str(exc).lower():
                logger.warning(
                    "MLflow %s: sqlite database is locked; retrying in %.1f s", operation, delay
                )
                time.sleep(delay)
                continue
            raise TrackingError(_message(uri, operation, exc)) from exc
    raise AssertionError("unreachable: the last try either returns or raises")


def _message(uri: str, operation: str, exc: BaseException) -> str:
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        fix = (
            "is the tracking server running and reachable? check tracking.uri, "
            "or set tracking.enabled=false to train without MLflow"
        )
    elif scheme.startswith("sqlite"):
        fix = (
            "is the database file's folder writable and the file a valid MLflow store "
            "not held by another process? check tracking.uri"
        )
    else:
        fix = "check tracking.uri (sqlite:///path/to/mlflow.db or http://host:port)"
    detail = str(exc)
    password = urlsplit(uri).password
    if password:  # MLflow's own message repeats the URI it called
        detail = detail.replace(f":{password}@", ":***@")
    return f"MLflow {operation} failed at {_redact(uri)}: {detail} -- {fix}"


def fail_fast_over_http(uri: str) -> None:
    """For a tracking server, cap MLflow's HTTP retries in this process (its defaults retry a
    dead server for minutes); a writer calls this in its own process, before its first call."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
