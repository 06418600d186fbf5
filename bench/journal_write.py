"""Journal writes: one tick of many sessions, on SQLite and (given a URL) PostgreSQL.

A session host writes once per tick for all its sessions (``Journal.write_sessions``): each
session's candle, prediction and state in one transaction. This measures that write, in
paired rounds that alternate the stores so drift on a shared machine hits each alike:

* ``sqlite``: ``Journal`` (SQLAlchemy Core) on a SQLite file, the default;
* ``sqlite-raw``: the same rows with the statements of the journal before SQLAlchemy
  (``INSERT OR REPLACE`` on the stdlib ``sqlite3``, WAL, ``synchronous=NORMAL``): what the
  port costs;
* ``postgres``: ``Journal`` on ``--database-url`` (``run.database_url``), or with
  ``--postgres`` on a throwaway local server (Debian's binaries, ``make database``; the tests'
  ``tests/pg_server.py``: fsync off, so it measures the journal's work, not the disk).

    .venv/bin/python bench/journal_write.py --postgres [--sessions 100] [--ticks 50] [--rounds 5]
    .venv/bin/python bench/journal_write.py --database-url postgresql+psycopg://u:pw@host/db
    .venv/bin/python bench/journal_write.py --quick

Prints, per store, the median over rounds of each round's median write (ms per tick) and
the per-round ratio to ``sqlite-raw``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.live import Journal  # noqa: E402

Steps = list[tuple[str, list[tuple[str, int, dict[str, Any]]]]]
HOUR_NS = 3_600_000_000_000


def tick_steps(tick: int, sessions: int) -> Steps:
    """What one tick journals per session: its candle, its prediction, its state."""
    t = 1_700_000_000_000_000_000 + tick * HOUR_NS
    candle = {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0}
    pred = {
        "target": t + HOUR_NS,
        "ghost": [1.0, 2.0, 0.5, 1.5],
        "probs": [0.3, 0.3, 0.4],
        "action": "HOLD",
        "signal": 0.1,
        "version": 1,
    }
    state = {"symbol": "S", "timeframe": "1h", "mode": "none", "last_time": t, "seen": tick}
    state["metrics"] = {"hits": tick // 2, "total": tick, "pending": list(range(8))}
    return [
        (f"s{i}", [("candle", t, candle), ("prediction", t, pred), ("state", t, state)])
        for i in range(sessions)
    ]


class RawSqlite:
    """The pre-SQLAlchemy journal's write (stdlib sqlite3), the baseline."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, symbol TEXT, timeframe TEXT,"
            " mode TEXT, last_time INTEGER, state TEXT, updated REAL);"
            "CREATE TABLE candles (session_id TEXT, time INTEGER, open REAL, high REAL,"
            " low REAL, close REAL, volume REAL, PRIMARY KEY (session_id, time)) WITHOUT ROWID;"
            "CREATE TABLE events (id INTEGER PRIMARY KEY, session_id TEXT, time INTEGER,"
            " kind TEXT, data TEXT, wall REAL);"
            "CREATE INDEX events_by_kind ON events (session_id, kind, time);"
        )

    def write(self, steps: Steps) -> None:
        now, db = time.time(), self.db
        db.execute("BEGIN")
        for sid, records in steps:
            for kind, t, d in records:
                if kind == "candle":
                    db.execute(
                        "INSERT OR REPLACE INTO candles VALUES (?,?,?,?,?,?,?)",
                        (sid, t, d["open"], d["high"], d["low"], d["close"], d["volume"]),
                    )
                elif kind == "state":
                    db.execute(
                        "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?)",
                        (sid, "S", "1h", "none", d["last_time"], json.dumps(d), now),
                    )
                else:
                    db.execute(
                        "INSERT INTO events (session_id, time, kind, data, wall) "
                        "VALUES (?,?,?,?,?)",
                        (sid, t, kind, json.dumps(d), now),
                    )
        db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def one_round(write: Callable[[Steps], None], sessions: int, ticks: int) -> float:
    """Median ms of one tick's write over ``ticks`` ticks (steps built outside the timing)."""
    times = []
    for k in range(ticks):
        steps = tick_steps(k, sessions)
        t0 = time.perf_counter()
        write(steps)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--database-url", default=None, help="a PostgreSQL to measure too")
    ap.add_argument("--postgres", action="store_true", help="start a local PostgreSQL for it")
    ap.add_argument("--quick", action="store_true", help="a short check: 20 sessions, 2 rounds")
    a = ap.parse_args()
    if a.quick:
        a.sessions, a.ticks, a.rounds = 20, 10, 2
    server = None
    if a.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import pg_server

        server = pg_server.start()
        a.database_url = server.url("candleray")
    try:
        run(a)
    finally:
        if server is not None:
            server.stop()


def run(a: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="journal-bench-"))
    try:
        stores = ["sqlite-raw", "sqlite"] + (["postgres"] if a.database_url else [])
        got: dict[str, list[float]] = {s: [] for s in stores}
        for r in range(a.rounds):
            for s in stores if r % 2 == 0 else reversed(stores):  # alternate who goes first
                if s == "sqlite-raw":
                    raw = RawSqlite(folder / f"raw-{r}.sqlite")
                    got[s].append(one_round(raw.write, a.sessions, a.ticks))
                    raw.close()
                else:
                    target = folder / f"j-{r}.sqlite" if s == "sqlite" else a.database_url
                    j = Journal(target, name=f"bench-{uuid.uuid4().hex[:8]}")
                    got[s].append(one_round(j.write, a.sessions, a.ticks))
                    j.close()
        print(f"journal write of one tick, {a.sessions} sessions x (candle, prediction, state):")
        for s in stores:
            ratio = statistics.median(x / b for x, b in zip(got[s], got["sqlite-raw"], strict=True))
            print(
                f"  {s:<10} median {statistics.median(got[s]):7.2f} ms per tick "
                f"({1e3 * a.sessions / statistics.median(got[s]):8.0f} sessions/s)  "
                f"x{ratio:.2f} of sqlite-raw  rounds {[round(x, 2) for x in got[s]]}"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
