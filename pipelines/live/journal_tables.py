"""The journal's tables (SQLAlchemy Core, SQLite or PostgreSQL) and its reads.

Rows of many journals share the tables, keyed by the journal's name (``<run.name>-host-<i>``):
one database server serves every host of a cluster. ``journal_events`` is ordered by ``id``,
the order of the writes (one writer per journal: ``journal_writers``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    inspect,
    select,
    text,
)

from pipelines.data.labels import pivots
from pipelines.database import writing
from pipelines.live.history import Candle

META = MetaData()
SESSIONS = Table(
    "journal_sessions",
    META,
    Column("journal", Text, primary_key=True),
    Column("session_id", Text, primary_key=True),
    Column("symbol", Text),
    Column("timeframe", Text),
    Column("mode", Text),
    Column("last_time", BigInteger),
    Column("state", Text),
    Column("updated", Double),
)
CANDLES = Table(
    "journal_candles",
    META,
    Column("journal", Text, primary_key=True),
    Column("session_id", Text, primary_key=True),
    Column("time", BigInteger, primary_key=True),
    *(Column(k, Double) for k in ("open", "high", "low", "close", "volume")),
)
EVENTS = Table(
    "journal_events",
    META,
    # SQLite numbers rows only through an INTEGER primary key; the order of writes is the id's
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("journal", Text, nullable=False),
    Column("session_id", Text),
    Column("time", BigInteger),
    Column("kind", Text),
    Column("data", Text),
    Column("wall", Double),
    Index("journal_events_by_kind", "journal", "session_id", "kind", "time"),
    Index("journal_events_by_time", "journal", "session_id", "time"),
)
# who writes each journal: a host takes the next epoch when it starts (``claim``) and every
# write checks it is still the newest, so a host cut off from the cluster (declared dead,
# restarted elsewhere) but still running can never write beside its successor
WRITERS = Table(
    "journal_writers",
    META,
    Column("journal", Text, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("claimed", Double),
)
FAR_PAST = -(2**62)


def adopt_unkeyed_tables(engine: Engine, name: str) -> None:
    """A journal file written before journals had names (tables ``sessions``, ``candles``,
    ``events``) is taken over under ``name`` once, so its sessions still resume."""
    if "sessions" not in inspect(engine).get_table_names():
        return
    with writing(engine) as db:
        for old, new, cols in (
            (
                "sessions",
                "journal_sessions",
                "session_id, symbol, timeframe, mode, last_time, state, updated",
            ),
            ("candles", "journal_candles", "session_id, time, open, high, low, close, volume"),
            ("events", "journal_events", "session_id, time, kind, data, wall"),
        ):
            order = " ORDER BY id" if old == "events" else ""
            db.execute(
                text(f"INSERT INTO {new} (journal, {cols}) SELECT :j, {cols} FROM {old}{order}"),
                {"j": name},
            )
            db.execute(text(f"ALTER TABLE {old} RENAME TO unnamed_{old}"))


def read_candles(
    db: Connection, journal: str, session_id: str, since: int | None, limit: int | None
) -> list[Candle]:
    c = CANDLES.c
    q = (
        select(c.time, c.open, c.high, c.low, c.close, c.volume)
        .where(
            c.journal == journal,
            c.session_id == session_id,
            c.time >= (since if since is not None else FAR_PAST),
        )
        .order_by(c.time.desc())
    )
    rows = db.execute(q.limit(int(limit)) if limit else q).all()
    return [Candle(*r) for r in reversed(rows)]


def read_events(
    db: Connection,
    journal: str,
    session_id: str,
    kind: str,
    since: int | None,
    limit: int | None,
) -> list[tuple[int, dict[str, Any]]]:
    e = EVENTS.c
    q = (
        select(e.time, e.data)
        .where(
            e.journal == journal,
            e.session_id == session_id,
            e.kind == kind,
            e.time >= (since if since is not None else FAR_PAST),
        )
        .order_by(e.id.desc())
    )
    rows = db.execute(q.limit(int(limit)) if limit else q).all()
    return [(t, json.loads(d)) for t, d in reversed(rows)]


def chart_frames(
    db: Connection, journal: str, session_id: str, since: int | None, pivot_bars: int
) -> dict[str, pd.DataFrame]:
    """``Journal.chart`` on the connection ``db`` (one snapshot)."""
    cs = read_candles(db, journal, session_id, since, None)
    idx = pd.DatetimeIndex([pd.Timestamp(c.time, tz="UTC") for c in cs], name="time")
    candles = pd.DataFrame(
        [c.values() for c in cs],
        index=idx,
        columns=["open", "high", "low", "close", "volume"],
        dtype="float64",
    )
    preds = read_events(db, journal, session_id, "prediction", since, None)
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
            for _, d in read_events(db, journal, session_id, "trade", since, None)
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
