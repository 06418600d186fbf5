"""Helpers of the MLflow tracker: sqlite store paths and locking, error codes, text limits."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from mlflow.exceptions import MlflowException
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: no lock; start the first process alone on a fresh store
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("pipelines.tracking")

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
