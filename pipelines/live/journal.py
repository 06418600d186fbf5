"""The journal: a durable, append-only record of every live session of one host.

Each step of a session (its candle, settlement, prediction, trades, training requests, mode
changes, bad data) is written in one transaction together with the session's state, so a
restarted host resumes exactly after the last journaled candle: a candle whose step was not
committed is fed again, none is predicted twice.

Where (``pipelines.database``): a SQLite file under ``run.home`` by default (WAL,
``synchronous=NORMAL``: a killed process loses nothing committed, a power cut may lose the
last steps), or one database server for every host of a cluster (``run.database_url``,
PostgreSQL), so a host that Ray restarts on another node finds its journal there. Rows are
keyed by the journal's ``name`` (``<run.name>-host-<i>``): many journals share one database.
One writer per journal (its host); readers (a dashboard) may run beside it: ``chart`` reads
one snapshot on a connection of its own, so a long read never waits for, or holds up, the
writer.

A write either commits or leaves the sessions holding their records (``write_sessions``): a
failed write (disk full, server gone) is retried by the next one, so the journal never lacks a
step the sessions took. A session stopped on purpose (``stop_session``, a host's clean
shutdown) is journaled ``stopped`` and never resumed; only a host that died resumes its
sessions.

Tables: ``journal_sessions`` (one row per session: its latest state), ``journal_candles``
(every accepted candle), ``journal_events`` (everything else, in order, with JSON data).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import (
    Connection,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from pipelines.database import (
    LOCK_TIMEOUT_S,
    SETTING,
    Target,
    connect_error,
    create_tables,
    describe,
    execute_many,
    file_path,
    open_engine,
    snapshot,
    timed_out,
    upsert,
    writing,
)
from pipelines.errors import CandlerayError, DatabaseError, JournalError
from pipelines.live.config import SessionSettings
from pipelines.live.history import Candle, history_capacity
from pipelines.live.journal_tables import (
    CANDLES,
    EVENTS,
    META,
    SESSIONS,
    WRITERS,
    adopt_unkeyed_tables,
    chart_frames,
    read_candles,
    read_events,
)
from pipelines.live.paper import Trade
from pipelines.live.queue import Batch, TrainCounts
from pipelines.live.session import Record, Session

_INSERT_EVENT = EVENTS.insert()

# outcome of a training call -> (done, dropped, timeout) per sample, as TrainingQueue counts it
_OUTCOMES = {
    "done": (1, 0, 0),
    "failed": (0, 1, 0),
    "timeout": (0, 1, 1),
    "late_done": (1, -1, 0),
    "lost": (0, 1, 0),
}


class Journal:
    """The journal ``name`` in ``target``: a SQLite file path (``name`` defaults to its stem,
    ``<run.name>-host-<i>``), or a database URL (``run.database_url``) that many hosts'
    journals share, each under its own name. ``lock_timeout_s``: how long a PostgreSQL
    statement waits for a lock (another writer's, or one a dead node's connection still
    holds) before it fails instead of blocking."""

    def __init__(
        self, target: Target, *, name: str | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S
    ) -> None:
        self.path = file_path(target)  # None: a database URL
        if name is None:
            if self.path is None:
                raise CandlerayError(
                    f"a journal in the database {describe(target)} needs a name (e.g. "
                    "<run.name>-host-0): many journals share one database"
                )
            name = self.path.stem
        self.name = name
        self._epoch: int | None = None  # this handle's writer epoch, once it wrote or claimed
        self.where = describe(target)  # for messages: a URL's password hidden
        self._engine = open_engine(target, what="live journal", lock_timeout_s=lock_timeout_s)
        try:
            create_tables(self._engine, META)
            if self._engine.dialect.name == "sqlite":
                adopt_unkeyed_tables(self._engine, name)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise connect_error(target, "live journal", exc) from exc

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"Journal({self.name!r} in {self.where})"

    # -- writing ------------------------------------------------------------------------------
    def claim(self) -> int:
        """Become the journal's one writer (a host at start): an earlier writer that is still
        running somewhere gets a ``JournalError`` from its next write. Returns the epoch.
        A ``DatabaseError`` if the database does not answer or the writers' row stays locked
        past the lock timeout (the old writer's connection, on a node that died mid-write):
        the caller may try again (a host does, within its start wait)."""
        try:
            with writing(self._engine) as db:
                return self._claim(db)
        except SQLAlchemyError as exc:
            raise self._read_error(exc, "take over as its writer") from exc

    def _claim(self, db: Connection) -> int:
        upsert(
            db,
            WRITERS,
            ("journal",),
            [{"journal": self.name, "epoch": 1, "claimed": time.time()}],
            bump="epoch",
        )
        self._epoch = db.execute(
            select(WRITERS.c.epoch).where(WRITERS.c.journal == self.name)
        ).scalar_one()
        return self._epoch

    def _check_writer(self, db: Connection) -> None:
        """Within a write: claim on the first one, else refuse if a newer writer claimed."""
        if self._epoch is None:
            self._claim(db)
            return
        newest = db.execute(
            select(WRITERS.c.epoch).where(WRITERS.c.journal == self.name).with_for_update()
        ).scalar()
        if newest != self._epoch:
            raise JournalError(
                f"the live journal {self.name!r} in {self.where} was taken over by a newer "
                f"host (writer {newest}, this one {self._epoch}): this host was declared dead "
                "and restarted elsewhere, its sessions go on there; it writes nothing more "
                "(stop it)"
            )

    def _read_error(self, exc: SQLAlchemyError, doing: str = "read") -> DatabaseError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if timed_out(exc):
            hint = (
                "a lock was held past the lock timeout, likely by the connection of a host "
                "whose node died mid-write (the server ends it within about a minute)"
            )
        else:
            hint = "the database did not answer"
        return DatabaseError(
            f"cannot {doing} the live journal {self.name!r} in {self.where} ({reason}): "
            f"{hint}; check {SETTING} and that its server runs and is reachable from this "
            "node (for SQLite files under run.home: the file and its folder)"
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """The one choke point of reads: a database error is a ``DatabaseError`` naming
        run.database_url, as a connect's is, not SQLAlchemy's own."""
        try:
            with self._engine.connect() as db:
                yield db
        except SQLAlchemyError as exc:
            raise self._read_error(exc) from exc

    def _write_error(self, exc: SQLAlchemyError) -> JournalError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return JournalError(
            f"the live journal {self.name!r} in {self.where} did not take a write "
            f"({reason}); nothing of it was committed and the sessions keep its records "
            "for the next write: free disk space or fix the file's folder "
            "(live.journal_dir), or bring the database server of run.database_url back"
        )

    def write(self, steps: Iterable[tuple[str, list[Record]]]) -> None:
        """Append the records of many sessions' steps in one transaction (all or nothing)."""
        now = time.time()
        j = self.name
        # one row per key, the last one winning (as INSERT OR REPLACE in order would)
        candles: dict[tuple[str, int], dict[str, Any]] = {}
        states: dict[str, dict[str, Any]] = {}
        events: list[dict[str, Any]] = []
        for sid, records in steps:
            for kind, t, data in records:
                if kind == "candle":
                    candles[(sid, int(t))] = {
                        "journal": j,
                        "session_id": sid,
                        "time": int(t),
                        **{k: float(data[k]) for k in ("open", "high", "low", "close", "volume")},
                    }
                elif kind == "state":
                    last = data["last_time"]
                    states[sid] = {
                        "journal": j,
                        "session_id": sid,
                        "symbol": data["symbol"],
                        "timeframe": data["timeframe"],
                        "mode": data["mode"],
                        "last_time": None if last is None else int(last),
                        "state": json.dumps(data),
                        "updated": now,
                    }
                else:
                    events.append(
                        {
                            "journal": j,
                            "session_id": sid,
                            "time": int(t),
                            "kind": kind,
                            "data": json.dumps(data),
                            "wall": now,
                        }
                    )
        try:
            with writing(self._engine) as db:
                self._check_writer(db)
                upsert(db, CANDLES, ("journal", "session_id", "time"), list(candles.values()))
                upsert(db, SESSIONS, ("journal", "session_id"), list(states.values()))
                execute_many(db, _INSERT_EVENT, events)
        except SQLAlchemyError as exc:
            raise self._write_error(exc) from exc

    def write_sessions(
        self,
        sessions: Sequence[Session],
        extra: Sequence[tuple[str, list[Record]]] = (),
        *,
        state: bool = False,
    ) -> None:
        """The records each session holds (its state last) and ``extra`` steps, in one
        transaction. If it does not commit, each session takes its records back
        (``Session.return_records``) and the error is raised: the next write carries them, so
        the journal never lacks a step a session took. ``state``: write each session's state
        even if it has no new records (a session just started, with no warm-up)."""
        taken = []
        for s in sessions:
            recs = s.take_records()
            if not recs and state:  # what take_records ends with when there are records
                recs = [("state", s.last_time or 0, s.state_dict())]
            taken.append((s, recs))
        try:
            self.write([*extra, *((s.session_id, r) for s, r in taken)])
        except BaseException:
            for s, r in taken:
                s.return_records(r)
            raise

    def write_session(self, session: Session) -> None:
        """The session's records since the last call, state included (e.g. after each step)."""
        self.write_sessions([session])

    def record_training(
        self, batch: Batch, outcome: str, result: dict[str, Any] | None = None
    ) -> None:
        """Write ``training_records(batch, outcome, result)`` (a JournalError if it does not commit)."""
        self.write(training_records(batch, outcome, result))

    # -- reading ------------------------------------------------------------------------------
    def _scalar(self, stmt: Any) -> Any:
        with self._reading() as db:
            return db.execute(stmt).scalar()

    def session_ids(self) -> list[str]:
        q = select(SESSIONS.c.session_id).where(SESSIONS.c.journal == self.name)
        with self._reading() as db:
            return list(db.execute(q.order_by(SESSIONS.c.session_id)).scalars())

    def last_time(self, session_id: str) -> int | None:
        """Open time (ns) of the last candle the session processed; feed it only later ones."""
        return self._scalar(
            select(SESSIONS.c.last_time).where(
                SESSIONS.c.journal == self.name, SESSIONS.c.session_id == session_id
            )
        )

    def candles(
        self, session_id: str, since: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """The session's candles (oldest first), from ``since`` (ns) on, or the newest ``limit``."""
        with self._reading() as db:
            return read_candles(db, self.name, session_id, since, limit)

    def events(
        self, session_id: str, kind: str, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """The session's events of ``kind`` in the order written (the newest ``limit`` if given)."""
        with self._reading() as db:
            return read_events(db, self.name, session_id, kind, since, limit)

    def fed_until(self, session_id: str) -> int | None:
        """Open time (ns) of the last candle the session's feed gave it, taken or skipped as
        bad (NaN, broken rules): a resumed feed starts after it, so a skipped candle is not
        fed, and counted, a second time."""
        bad = self._scalar(
            select(func.max(EVENTS.c.time)).where(
                EVENTS.c.journal == self.name,
                EVENTS.c.session_id == session_id,
                EVENTS.c.kind == "bad_data",
            )
        )
        last = self.last_time(session_id)
        times = [t for t in (last, bad) if t is not None]
        return max(times) if times else None

    def stopped(self, session_id: str) -> bool:
        """True if the session was stopped on purpose (never to be resumed)."""
        return bool(self.events(session_id, "stopped", limit=1))

    def train_counts(self, session_id: str, trend_window: int = 20) -> TrainCounts:
        """The session's training accounting, from its requests and the calls' outcomes."""
        c = TrainCounts(losses=deque(maxlen=trend_window))
        c.requested = self._scalar(
            select(func.count()).where(
                EVENTS.c.journal == self.name,
                EVENTS.c.session_id == session_id,
                EVENTS.c.kind == "train_request",
            )
        )
        for _, d in self.events(session_id, "train_result"):
            done, dropped, timeout = _OUTCOMES[d["outcome"]]
            c.done += done * d["n"]
            c.dropped += dropped * d["n"]
            c.timeouts += timeout
            if done > 0:
                c.last_train_time = d["at"]
                if d["loss"] is not None:
                    c.losses.append(d["loss"])
        return c

    def restore(
        self, session_id: str, settings: SessionSettings, trend_window: int = 20
    ) -> tuple[Session, TrainCounts]:
        """Rebuild a session and its training accounting after a restart.

        Samples that were pending in the old host's queue died with it: they are journaled as
        dropped (outcome ``lost``), so ``requested = done + dropped`` still holds.
        """
        row = self._scalar(
            select(SESSIONS.c.state).where(
                SESSIONS.c.journal == self.name, SESSIONS.c.session_id == session_id
            )
        )
        if row is None:
            raise CandlerayError(
                f"session {session_id!r} is not in the journal {self.name!r} in {self.where}; "
                f"known: {self.session_ids()[:20]}"
            )
        state = json.loads(row)
        cap = history_capacity(
            settings.window, settings.pivot_bars, state["timeframe"], settings.extra_timeframes
        )
        trades = [Trade(**d) for _, d in self.events(session_id, "trade", limit=1000)]
        session = Session.restore(state, self.candles(session_id, limit=cap), settings, trades)
        counts = self.train_counts(session_id, trend_window)
        if counts.pending:
            self.write(
                [
                    (
                        session_id,
                        [
                            (
                                "train_result",
                                0,
                                {
                                    "batch": 0,
                                    "n": counts.pending,
                                    "outcome": "lost",
                                    "loss": None,
                                    "at": time.time(),
                                },
                            )
                        ],
                    )
                ]
            )
            counts.dropped += counts.pending
        return session, counts

    def chart(
        self, session_id: str, since: int | None = None, pivot_bars: int = 3
    ) -> dict[str, pd.DataFrame]:
        """What a chart draws from ``since`` (ns) on: candles, ghost candles, confirmed pivots,
        signals and closed trades, each a DataFrame (times as UTC timestamps).

        One snapshot (candles and events of the same ticks), on a read connection of this
        call's own: the writer is the host loop's, and a chart of a long session (seconds of
        reading) must not hold that up."""
        try:
            with snapshot(self._engine) as db:
                return chart_frames(db, self.name, session_id, since, pivot_bars)
        except SQLAlchemyError as exc:
            raise self._read_error(exc) from exc


def training_records(
    batch: Batch, outcome: str, result: dict[str, Any] | None = None
) -> list[tuple[str, list[Record]]]:
    """One ``train_result`` event per session in ``batch``: outcome done, failed, timeout or
    late_done. Built apart from the write, so a caller whose write fails keeps them and writes
    them again (``actors.hosts.training``): a result lost would count its samples dropped."""
    if outcome not in _OUTCOMES:
        raise CandlerayError(f"training outcome {outcome!r} is not one of {list(_OUTCOMES)}")
    loss = None if result is None else result.get("total_loss")
    at = time.time()
    return [
        (
            sid,
            [
                (
                    "train_result",
                    0,
                    {"batch": batch.id, "n": n, "outcome": outcome, "loss": loss, "at": at},
                )
            ],
        )
        for sid, n in batch.per_session().items()
    ]
