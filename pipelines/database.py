"""Where session journals and annotations live: SQLAlchemy Core engines and their errors.

Two forms. The default is an embedded SQLite file under ``run.home`` (one per journal, one
for annotations): nothing to run, but it lives on one node's disk. On a cluster
``run.database_url`` names one database server (PostgreSQL) that every node reaches, so a
session host that Ray restarts on another node finds its journal there. Both go through the
same SQLAlchemy Core statements; only the upsert and the engine's setup differ by dialect.

This module is the one choke point for the database's own errors: a connection that fails
is a ``DatabaseError`` naming ``run.database_url`` and the fix, raised at once (libpq's
connect timeout, never a hang).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from sqlalchemy import MetaData, Table, create_engine, event, literal_column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from pipelines.errors import ConfigError, DatabaseError

logger = logging.getLogger(__name__)

SETTING = "run.database_url"
# postgresql:// means psycopg (3) here: SQLAlchemy's own default is psycopg2, not installed
SCHEMES = ("postgresql", "postgresql+psycopg", "sqlite")
FORMS = "postgresql+psycopg://user:password@host:5432/dbname, or sqlite:////abs/path.db"
CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this long, not a hang
# A writer locks its journal's journal_writers row each tick. A node that dies or is cut off
# mid-transaction would keep that lock until TCP keepalive's default notices (~2 h), and the
# host Ray restarts elsewhere would block in its claim for good. So: waiting for a lock or a
# statement ends with an error after LOCK_TIMEOUT_S (a tick's write takes milliseconds; a
# chart's read seconds), an open transaction left idle is ended by the server after
# IDLE_IN_TRANSACTION_S, and a peer that stopped answering is noticed in ~25 s (keepalives
# from 10 s idle, every 5 s, 3 lost) or when sent data is unacknowledged for TCP_USER_TIMEOUT_S.
LOCK_TIMEOUT_S = 30.0
IDLE_IN_TRANSACTION_S = 60.0
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
TCP_USER_TIMEOUT_S = 30
# SQLSTATEs of a wait that a timeout above ended: lock_not_available, query_canceled
TIMEOUT_STATES = ("55P03", "57014")

Target = str | Path | URL  # a SQLite file path, or a database URL


def parse_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL with its driver named; ``ConfigError`` if it is not one
    of the allowed forms (the message names ``run.database_url``)."""
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"{SETTING}={_safe(url)} is not a database URL; use {FORMS} (or null for SQLite "
            "files under run.home)"
        ) from exc
    if u.drivername not in SCHEMES:
        raise ConfigError(
            f"{SETTING}: scheme {u.drivername!r} is not supported; use one of {list(SCHEMES)}: "
            f"{FORMS} (or null for SQLite files under run.home)"
        )
    if u.drivername.startswith("postgresql"):
        if not u.host or not u.database:
            raise ConfigError(f"{SETTING}={_safe(u)} names no host or no database; use {FORMS}")
        return u.set(drivername="postgresql+psycopg")
    if not u.database or u.database == ":memory:":
        raise ConfigError(
            f"{SETTING}={_safe(u)}: a SQLite URL needs a file (an in-memory database is lost "
            f"with its process); use {FORMS}"
        )
    return u


def is_url(target: Target) -> bool:
    return isinstance(target, URL) or (isinstance(target, str) and "://" in target)


def file_path(target: Target) -> Path | None:
    """``target`` as a SQLite file's path; None for a URL."""
    return None if isinstance(target, URL) or "://" in str(target) else Path(target)


def describe(target: Target) -> str:
    """``target`` for messages and logs: a URL with its password hidden."""
    return _safe(target) if is_url(target) else str(target)


def _safe(url: str | URL | Path) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)  # type: ignore[arg-type]
    except (ArgumentError, TypeError):
        return repr(str(url))


def open_engine(
    target: Target,
    *,
    what: str,
    pooled: bool = True,
    busy_timeout_s: float = 5.0,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> Engine:
    """An engine on ``target`` (a SQLite path or a URL), connected once, so a bad URL, an
    unreachable server or a refused password fails here with a ``DatabaseError``.
    ``pooled=False``: a connection per use, closed after it (rare users: annotations).
    ``busy_timeout_s``: how long a SQLite write waits for another writer's lock.
    ``lock_timeout_s``: how long a PostgreSQL statement waits for a lock, or runs."""
    path = file_path(target)
    if path is None:
        url = parse_url(cast("str | URL", target))
    else:
        url = URL.create("sqlite", database=str(path.expanduser()))
    kwargs: dict[str, Any] = {"poolclass": NullPool} if not pooled else {}
    if url.drivername == "sqlite":
        assert url.database
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the folder of the {what} {url.database}: {exc}; check "
                "run.home (or the path) is writable"
            ) from exc
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}, **kwargs
        )
        _sqlite_setup(engine)
    else:
        engine = create_engine(
            url,
            connect_args=postgres_connect_args(lock_timeout_s),
            pool_pre_ping=pooled,  # a server restarted between writes: reconnect, not fail
            **kwargs,
        )
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        engine.dispose()
        raise connect_error(target, what, exc) from exc
    return engine


def postgres_connect_args(lock_timeout_s: float = LOCK_TIMEOUT_S) -> dict[str, Any]:
    """psycopg's connect kwargs (libpq parameters, passed through): see LOCK_TIMEOUT_S."""
    ms = max(1, int(lock_timeout_s * 1000))
    idle_ms = max(ms, int(IDLE_IN_TRANSACTION_S * 1000))
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": (
            f"-c lock_timeout={ms} -c statement_timeout={ms} "
            f"-c idle_in_transaction_session_timeout={idle_ms}"
        ),
        "keepalives": 1,
        "keepalives_idle": KEEPALIVE_IDLE_S,
        "keepalives_interval": KEEPALIVE_INTERVAL_S,
        "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_S * 1000,
    }


def timed_out(exc: BaseException) -> bool:
    """True if ``exc`` is a lock or statement wait that LOCK_TIMEOUT_S ended."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in TIMEOUT_STATES


def connect_error(target: Target, what: str, exc: BaseException) -> DatabaseError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if is_url(target):
        return DatabaseError(
            f"cannot connect to the {what} database {describe(target)} ({reason}); check "
            f"{SETTING} ({FORMS}; the password may also come from PGPASSWORD): that the server "
            "runs and accepts connections from this node (listen_addresses, pg_hba.conf), the "
            "user and password, and that the database exists (createdb)"
        )
    return DatabaseError(
        f"cannot open the {what} {target} ({reason}); check the folder is writable and the "
        f"file is a SQLite database, or set {SETTING} to a database server"
    )


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_con: Any, _record: Any) -> None:
        # SQLAlchemy's BEGIN, not the driver's: the driver opens no transaction for reads, so
        # a chart's reads would not be one snapshot
        dbapi_con.isolation_level = None
        cur = dbapi_con.cursor()
        # a SIGKILLed writer loses nothing committed (a power cut may lose the last steps)
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # a writer takes the write lock first: a read-then-write transaction that waited
        # could otherwise fail at its first write instead of waiting (busy timeout)
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction: committed at the end, rolled back on any error."""
    with engine.connect() as conn, conn.execution_options(write=True).begin():
        yield conn


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one committed state (SQLite's WAL snapshot, PostgreSQL's
    REPEATABLE READ), on a connection of its own: it never holds up a writer."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """Create ``metadata``'s missing tables and indexes. Hosts starting together on one
    server must not race (two ``CREATE TABLE``s of one name: one fails on PostgreSQL's
    catalog), so the creators take turns on an advisory lock."""
    key = int.from_bytes(hashlib.sha1(",".join(sorted(metadata.tables)).encode()).digest()[:7])
    with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        metadata.create_all(conn, checkfirst=True)


@functools.lru_cache(maxsize=64)
def upsert_statement(dialect: str, table: Table, keys: tuple[str, ...], bump: str | None) -> Any:
    """``upsert``'s statement, built once per table (building one costs more than a write)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    values: dict[str, Any] = {c.name: stmt.excluded[c.name] for c in table.c if c.name not in keys}
    if bump is not None:
        values[bump] = table.c[bump] + literal_column("1")  # no bound value: see execute_many
    return stmt.on_conflict_do_update(index_elements=[table.c[k] for k in keys], set_=values)


def upsert(
    conn: Connection,
    table: Table,
    keys: Sequence[str],
    rows: list[dict],
    *,
    bump: str | None = None,
) -> None:
    """Insert ``rows``, replacing those whose ``keys`` exist (SQLite's INSERT OR REPLACE).
    A key must appear once in ``rows`` (PostgreSQL refuses to update a row twice).
    ``bump``: a column an existing row adds 1 to instead of taking the new value."""
    if rows:
        execute_many(conn, upsert_statement(conn.dialect.name, table, tuple(keys), bump), rows)


@functools.lru_cache(maxsize=64)
def _driver_sql(
    stmt: Any, dialect: Any, columns: tuple[str, ...]
) -> tuple[str, tuple[str, ...] | None]:
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    order = tuple(compiled.positiontup) if compiled.positional else None
    return compiled.string, order


def execute_many(conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    """``conn.execute(stmt, rows)`` straight to the driver's executemany: the journal writes a
    tick of every session at once, and SQLAlchemy's per-row parameter handling would cost
    more than the database's work. Rows hold plain values (int, float, str, None), every row
    the same columns."""
    if not rows:
        return
    sql, order = _driver_sql(stmt, conn.dialect, tuple(rows[0]))
    params: list[Any] = rows if order is None else [tuple(r[k] for k in order) for r in rows]
    conn.exec_driver_sql(sql, params)
