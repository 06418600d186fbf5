"""The journal: a durable, append-only record of every live session of one model (SQLite).

Each step of a session (its candle, settlement, prediction, trades, training requests, mode
changes, bad data) is written in one transaction together with the session's state, so a
restarted host resumes exactly after the last journaled candle: a candle whose step was not
committed is fed again, none is predicted twice. WAL mode with ``synchronous=NORMAL``: a
killed process (SIGKILL) loses nothing committed (a power cut may lose the last steps).
One writer per file (the host of the model's sessions); readers (a dashboard) may run beside it:
``chart`` reads on a connection of its own, so a long read never waits for, or holds up, the
writer (WAL: a reader sees the last committed transaction).

A write either commits or leaves the sessions holding their records (``write_sessions``): a
failed write (disk full) is retried by the next one, so the file never lacks a step the
sessions took. A session stopped on purpose (``stop_session``, a host's clean shutdown) is
journaled ``stopped`` and never resumed; only a host that died resumes its sessions.

Tables: ``sessions`` (one row per session: its latest state), ``candles`` (every accepted
candle), ``events`` (everything else, in order, with JSON data).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.data.labels import pivots
from pipelines.errors import CandlerayError, JournalError
from pipelines.live.config import SessionSettings
from pipelines.live.history import Candle, history_capacity
from pipelines.live.paper import Trade
from pipelines.live.queue import Batch, TrainCounts
from pipelines.live.session import Record, Session

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, symbol TEXT, timeframe TEXT, mode TEXT,
    last_time INTEGER, state TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS candles (
    session_id TEXT, time INTEGER, open REAL, high REAL, low REAL, close REAL, volume REAL,
    PRIMARY KEY (session_id, time)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, session_id TEXT, time INTEGER, kind TEXT, data TEXT, wall REAL);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (session_id, kind, time);
"""

# outcome of a training call -> (done, dropped, timeout) per sample, as TrainingQueue counts it
_OUTCOMES = {
    "done": (1, 0, 0),
    "failed": (0, 1, 0),
    "timeout": (0, 1, 1),
    "late_done": (1, -1, 0),
    "lost": (0, 1, 0),
}


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise CandlerayError(
                f"cannot open the live journal {self.path}: {exc}; check the folder is writable "
                "(live.journal_dir) and that the file is a SQLite database"
            ) from exc

    def close(self) -> None:
        self._db.close()

    # -- writing ------------------------------------------------------------------------------
    def write(self, steps: Iterable[tuple[str, list[Record]]]) -> None:
        """Append the records of many sessions' steps in one transaction (all or nothing)."""
        now = time.time()
        db = self._db
        try:
            db.execute("BEGIN")
            for sid, records in steps:
                for kind, t, data in records:
                    if kind == "candle":
                        db.execute(
                            "INSERT OR REPLACE INTO candles VALUES (?,?,?,?,?,?,?)",
                            (
                                sid,
                                t,
                                data["open"],
                                data["high"],
                                data["low"],
                                data["close"],
                                data["volume"],
                            ),
                        )
                    elif kind == "state":
                        db.execute(
                            "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?)",
                            (
                                sid,
                                data["symbol"],
                                data["timeframe"],
                                data["mode"],
                                data["last_time"],
                                json.dumps(data),
                                now,
                            ),
                        )
                    else:
                        db.execute(
                            "INSERT INTO events (session_id, time, kind, data, wall) VALUES (?,?,?,?,?)",
                            (sid, t, kind, json.dumps(data), now),
                        )
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise JournalError(
                    f"the live journal {self.path} did not take a write ({exc}); nothing of it "
                    "was committed and the sessions keep its records for the next write: free "
                    "disk space or fix the file's folder (live.journal_dir)"
                ) from exc
            raise

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
        the file never lacks a step a session took. ``state``: write each session's state
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
    def session_ids(self) -> list[str]:
        return [
            r[0] for r in self._db.execute("SELECT session_id FROM sessions ORDER BY session_id")
        ]

    def last_time(self, session_id: str) -> int | None:
        """Open time (ns) of the last candle the session processed; feed it only later ones."""
        row = self._db.execute(
            "SELECT last_time FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        return None if row is None else row[0]

    def candles(
        self, session_id: str, since: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """The session's candles (oldest first), from ``since`` (ns) on, or the newest ``limit``."""
        return _candles(self._db, session_id, since, limit)

    def events(
        self, session_id: str, kind: str, since: int | None = None, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """The session's events of ``kind`` in the order written (the newest ``limit`` if given)."""
        return _events(self._db, session_id, kind, since, limit)

    def fed_until(self, session_id: str) -> int | None:
        """Open time (ns) of the last candle the session's feed gave it, taken or skipped as
        bad (NaN, broken rules): a resumed feed starts after it, so a skipped candle is not
        fed, and counted, a second time."""
        row = self._db.execute(
            "SELECT MAX(time) FROM events WHERE session_id=? AND kind='bad_data'", (session_id,)
        ).fetchone()
        last = self.last_time(session_id)
        times = [t for t in (last, row[0]) if t is not None]
        return max(times) if times else None

    def stopped(self, session_id: str) -> bool:
        """True if the session was stopped on purpose (never to be resumed)."""
        return bool(self.events(session_id, "stopped", limit=1))

    def train_counts(self, session_id: str, trend_window: int = 20) -> TrainCounts:
        """The session's training accounting, from its requests and the calls' outcomes."""
        c = TrainCounts(losses=deque(maxlen=trend_window))
        c.requested = self._db.execute(
            "SELECT COUNT(*) FROM events WHERE session_id=? AND kind='train_request'", (session_id,)
        ).fetchone()[0]
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
        row = self._db.execute(
            "SELECT state FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        if row is None:
            raise CandlerayError(
                f"session {session_id!r} is not in the journal {self.path}; "
                f"known: {self.session_ids()[:20]}"
            )
        state = json.loads(row[0])
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
        signals and closed trades, each a DataFrame (times as UTC timestamps)."""
        with self._reader() as db:
            return _chart(db, session_id, since, pivot_bars)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection of this call's own: the writer's is the host loop's, under its
        lock, and a chart of a long session (seconds of reading) must not hold that up."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("BEGIN")  # one snapshot: candles and events of the same ticks
        except sqlite3.Error as exc:
            raise CandlerayError(f"cannot read the live journal {self.path}: {exc}") from exc
        try:
            yield db
        finally:
            db.close()


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


def _candles(
    db: sqlite3.Connection, session_id: str, since: int | None, limit: int | None
) -> list[Candle]:
    q = "SELECT time, open, high, low, close, volume FROM candles WHERE session_id=? AND time>=?"
    rows = db.execute(
        q + " ORDER BY time DESC" + (f" LIMIT {int(limit)}" if limit else ""),
        (session_id, since if since is not None else -(2**62)),
    ).fetchall()
    return [Candle(*r) for r in reversed(rows)]


def _events(
    db: sqlite3.Connection, session_id: str, kind: str, since: int | None, limit: int | None
) -> list[tuple[int, dict[str, Any]]]:
    rows = db.execute(
        "SELECT time, data FROM events WHERE session_id=? AND kind=? AND time>=? "
        "ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else ""),
        (session_id, kind, since if since is not None else -(2**62)),
    ).fetchall()
    return [(t, json.loads(d)) for t, d in reversed(rows)]


def _chart(
    db: sqlite3.Connection, session_id: str, since: int | None, pivot_bars: int
) -> dict[str, pd.DataFrame]:
    """``Journal.chart`` on the connection ``db``."""
    cs = _candles(db, session_id, since, None)
    idx = pd.DatetimeIndex([pd.Timestamp(c.time, tz="UTC") for c in cs], name="time")
    candles = pd.DataFrame(
        [c.values() for c in cs],
        index=idx,
        columns=["open", "high", "low", "close", "volume"],
        dtype="float64",
    )
    preds = _events(db, session_id, "prediction", since, None)
    ts = lambda ns: pd.Timestamp(ns, tz="UTC")  # noqa: E731
    ghosts = pd.DataFrame(
        [
            {
                "time": ts(d["target"]),
                "made_at": ts(t),
                "open": d["ghost"][0],
                "high": d["ghost"][1],
                "low": d["ghost"][2],
                "close": d["ghost"][3],
                "version": d["version"],
            }
            for t, d in preds
        ],
        columns=["time", "made_at", "open", "high", "low", "close", "version"],
    )
    signals = pd.DataFrame(
        [
            {
                "time": ts(t),
                "action": d["action"],
                "signal": d["signal"],
                "p_hold": d["probs"][0],
                "p_buy": d["probs"][1],
                "p_sell": d["probs"][2],
            }
            for t, d in preds
        ],
        columns=["time", "action", "signal", "p_hold", "p_buy", "p_sell"],
    )
    trades = pd.DataFrame(
        [
            {**d, "entry_time": ts(d["entry_time"]), "exit_time": ts(d["exit_time"])}
            for _, d in _events(db, session_id, "trade", since, None)
        ]
    )
    piv = (
        pivots(candles, pivot_bars)
        if len(candles)
        else pd.DataFrame(
            columns=["bar", "time", "kind", "price", "confirmed_bar", "confirmed_time"]
        )
    )
    return {
        "candles": candles,
        "ghosts": ghosts,
        "pivots": piv,
        "signals": signals,
        "trades": trades,
    }
