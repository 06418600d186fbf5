"""Annotations: trades a person marked on a chart, their store, and the samples they train.

An :class:`Annotation` is (symbol, timeframe, side, entry time and price, exit time and
price, note, created time) with an id. ``symbol`` is a spec without the timeframe
(``sample:EURUSD``, ``binance:BTC/USDT``), ``side`` is ``long`` or ``short``.

:class:`AnnotationStore` keeps them in one SQLite file (``annotations.path`` below
``run.home``), or, on a cluster, in the database server of ``run.database_url`` (table
``annotations``, beside the session journals): add, list (by symbol/timeframe), remove, export/import JSON. Before
anything is stored, every annotation is checked against its candles (taken from the
``loader`` callable, so tests can pass a DataFrame), and refused with ``AnnotationError``
when: the symbol or timeframe is unknown (its candles cannot be loaded); a time falls in no
candle; the exit candle is not after the entry candle; a price lies outside its candle's
low-high range by more than ``annotations.price_tolerance`` (a fraction of the price). A
stored time is its candle's open time (a time anywhere inside a bar marks that bar).
An import is all or nothing: one refused entry and nothing of the file is stored.

:func:`to_samples` turns annotations into training samples for the ModelActor: the entry
candle is BUY for a long and SELL for a short, the exit candle the opposite; with
``annotations.hold_between`` (default) every candle strictly between them is HOLD,
without it only entry and exit are trained. A sample is the window ending at that candle
and its next-candle target, built by the same code as batch training
(``make_windows``, ``higher_timeframes``, ``candle_targets``), so ``x`` equals the batch
window of that bar. A bar without a full window before it, or without a next candle, gives
no sample; it is logged and listed in ``Samples.skipped``, and so is a whole trade whose
entry or exit candle is no longer among the loaded candles (the data range moved since).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    MetaData,
    Table,
    Text,
    select,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from conf.schema import AnnotationConfig, Config, DataConfig
from pipelines.data.annotation_samples import Samples, to_samples
from pipelines.data.candles import timeframe_offset
from pipelines.data.sources import SymbolSpec, load_candles, parse_symbol
from pipelines.database import Target, create_tables, describe, open_engine, parse_url, writing
from pipelines.errors import AnnotationError, CandlerayError, ConfigError, DatabaseError

SIDES = ("long", "short")
CandleLoader = Callable[[SymbolSpec], pd.DataFrame]
_FIELDS = [
    "id",
    "symbol",
    "timeframe",
    "side",
    "entry_time",
    "entry_price",
    "exit_time",
    "exit_price",
    "note",
    "created",
]


def _utc(value: object, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise AnnotationError(
            f"{what} {value!r} is not a time; use ISO 8601, e.g. 2024-01-05T13:00Z (UTC if no zone)"
        ) from exc
    if ts is pd.NaT:
        raise AnnotationError(f"{what} is missing; give an ISO 8601 time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _price(value: object, what: str) -> float:
    try:
        p = float(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise AnnotationError(f"{what} {value!r} is not a number; give a price > 0") from exc
    if not math.isfinite(p) or p <= 0:
        raise AnnotationError(f"{what} {value!r} is not allowed; give a finite price > 0")
    return p


@dataclass(frozen=True)
class Annotation:
    """One marked trade. Times are UTC; in the store they are candle open times."""

    symbol: str
    timeframe: str
    side: str
    entry_time: pd.Timestamp
    entry_price: float
    exit_time: pd.Timestamp
    exit_price: float
    note: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))

    @staticmethod
    def parse(**fields: Any) -> Annotation:
        """From user or JSON values (strings allowed); a wrong field is an ``AnnotationError``."""
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise AnnotationError(f"unknown annotation field(s) {unknown}; fields are {_FIELDS}")
        missing = [k for k in _FIELDS[1:8] if fields.get(k) in (None, "")]
        if missing:
            raise AnnotationError(f"annotation lacks {missing}; each needs {list(_FIELDS[1:8])}")
        side = str(fields["side"]).lower()
        if side not in SIDES:
            raise AnnotationError(f"side {fields['side']!r} is not allowed; use long or short")
        extra = {k: fields[k] for k in ("id", "note") if fields.get(k) is not None}
        if fields.get("created") is not None:
            extra["created"] = _utc(fields["created"], "created")
        return Annotation(
            symbol=str(fields["symbol"]).strip(),
            timeframe=str(fields["timeframe"]).strip(),
            side=side,
            entry_time=_utc(fields["entry_time"], "entry time"),
            entry_price=_price(fields["entry_price"], "entry price"),
            exit_time=_utc(fields["exit_time"], "exit time"),
            exit_price=_price(fields["exit_price"], "exit price"),
            **{k: str(v) if k != "created" else v for k, v in extra.items()},
        )

    @property
    def spec(self) -> SymbolSpec:
        return SymbolSpec(*self.symbol.split(":", 1), self.timeframe)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("entry_time", "exit_time", "created"):
            d[k] = d[k].isoformat()
        return {k: d[k] for k in _FIELDS}


def check_annotation(a: Annotation, loader: CandleLoader, tolerance: float) -> Annotation:
    """``a`` with its symbol normalised and times moved to their candles' open times, or
    ``AnnotationError`` naming the rule it breaks."""
    if "@" in a.symbol:
        raise AnnotationError(
            f"symbol {a.symbol!r}: give the timeframe separately, not as @tf in the symbol"
        )
    try:
        spec = parse_symbol(f"{a.symbol}@{a.timeframe}", a.timeframe)
        candles = loader(spec)
    except CandlerayError as exc:  # DataSourceError (symbol), ConfigError (timeframe), ...
        raise AnnotationError(
            f"unknown symbol or timeframe {a.symbol!r} @ {a.timeframe!r}: {exc}"
        ) from exc
    bars = []
    for what, t, price in (
        ("entry", a.entry_time, a.entry_price),
        ("exit", a.exit_time, a.exit_price),
    ):
        i = int(candles.index.searchsorted(t, side="right")) - 1
        if i < 0 or t >= candles.index[i] + timeframe_offset(spec.timeframe):
            span = f"{candles.index[0]} .. {candles.index[-1]}" if len(candles) else "none"
            raise AnnotationError(
                f"{what} time {t} falls in no {spec.timeframe} candle of {a.symbol} (a gap, or "
                f"outside the data: candles open {span}); mark a time inside a candle"
            )
        low, high = float(candles["low"].iat[i]), float(candles["high"].iat[i])
        if not low * (1 - tolerance) <= price <= high * (1 + tolerance):
            raise AnnotationError(
                f"{what} price {price} is outside the {candles.index[i]} candle's range "
                f"[{low}, {high}] (tolerance {tolerance:.4%}, annotations.price_tolerance); "
                "mark a price the market traded in that candle"
            )
        bars.append(i)
    if bars[1] <= bars[0]:
        raise AnnotationError(
            f"exit {a.exit_time} is not after entry {a.entry_time} (in {spec.timeframe} "
            "candles); the exit must be in a later candle than the entry"
        )
    return Annotation(
        **{
            **{k: getattr(a, k) for k in _FIELDS},
            "symbol": f"{spec.source}:{spec.symbol}",
            "entry_time": candles.index[bars[0]],
            "exit_time": candles.index[bars[1]],
        }
    )


def candle_loader(data: DataConfig) -> CandleLoader:
    """``load_candles`` for each spec, loaded once per spec for the loader's life."""
    seen: dict[str, pd.DataFrame] = {}

    def load(spec: SymbolSpec) -> pd.DataFrame:
        if spec.key not in seen:
            seen[spec.key] = load_candles(spec, data)
        return seen[spec.key]

    return load


def store_path(cfg: Config) -> Path | URL:
    """Where the annotations live: ``run.database_url`` if set (a URL whose ``str`` hides the
    password), else the SQLite file ``annotations.path`` (below ``run.home`` if relative)."""
    if cfg.run.database_url:
        return parse_url(cfg.run.database_url)
    p = Path(cfg.annotations.path).expanduser()
    return p if p.is_absolute() else Path(cfg.run.home) / p


def check_annotation_config(cfg: AnnotationConfig) -> None:
    if not 0 <= cfg.price_tolerance < 1:
        raise ConfigError(
            f"annotations.price_tolerance={cfg.price_tolerance} must be in [0, 1) "
            "(a fraction of the price, e.g. 0.001)"
        )
    if cfg.epochs < 1:
        raise ConfigError(f"annotations.epochs={cfg.epochs} must be >= 1")


_META = MetaData()
# the columns of the SQLite files earlier versions wrote: those files open as they are
ANNOTATIONS = Table(
    "annotations",
    _META,
    Column("id", Text, primary_key=True),
    Column("symbol", Text, nullable=False),
    Column("timeframe", Text, nullable=False),
    Column("side", Text, CheckConstraint("side IN ('long', 'short')"), nullable=False),
    Column("entry_ns", BigInteger, nullable=False),
    Column("entry_price", Double, nullable=False),
    Column("exit_ns", BigInteger, nullable=False),
    Column("exit_price", Double, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)


def _ns(ts: pd.Timestamp) -> int:
    return int(ts.as_unit("ns").value)


class AnnotationStore:
    """Annotations in ``path`` (a SQLite file, or a database URL: ``store_path``), checked
    with candles from ``loader``. Nothing is opened until the first use."""

    def __init__(self, path: Target, *, loader: CandleLoader, tolerance: float) -> None:
        self.path = path
        self._loader = loader
        self._tolerance = tolerance
        self._engine: Engine | None = None

    def _db(self) -> Engine:
        if self._engine is None:
            # a connection per use (rare calls; nothing held open between them)
            engine = open_engine(
                self.path, what="annotations store", pooled=False, busy_timeout_s=30
            )
            try:
                create_tables(engine, _META)
            except SQLAlchemyError as exc:
                raise self._error("prepare", exc) from exc
            self._engine = engine
        return self._engine

    def _error(self, doing: str, exc: SQLAlchemyError) -> DatabaseError:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return DatabaseError(
            f"the annotations store {describe(self.path)} could not {doing} ({reason}); nothing "
            "was changed: check annotations.path's folder (disk space, permissions) or the "
            "database server of run.database_url"
        )

    def add(self, a: Annotation) -> Annotation:
        """Check and store one annotation; returns it as stored."""
        return self.add_many([a])[0]

    def add_many(self, items: Iterable[Annotation]) -> list[Annotation]:
        """Check every annotation, then store all in one transaction (or none on a refusal).

        An id already stored with the same content is skipped (so an import can be repeated);
        with other content it is refused.
        """
        checked = [check_annotation(a, self._loader, self._tolerance) for a in items]
        ids = [a.id for a in checked]
        if len(set(ids)) != len(ids):
            raise AnnotationError("the same annotation id appears twice; ids must be unique")
        try:
            with writing(self._db()) as con:
                new = []
                for a in checked:
                    old = self._get(con, a.id)
                    if old is None:
                        new.append(a)
                    elif old.to_dict() != a.to_dict():
                        raise AnnotationError(
                            f"annotation id {a.id} is already stored with other content; remove "
                            "it first or give the new one another id"
                        )
                if new:
                    con.execute(ANNOTATIONS.insert(), [self._values(a) for a in new])
        except SQLAlchemyError as exc:
            raise self._error("store the annotations", exc) from exc
        return checked

    @staticmethod
    def _values(a: Annotation) -> dict[str, Any]:
        return {
            "id": a.id,
            "symbol": a.symbol,
            "timeframe": a.timeframe,
            "side": a.side,
            "entry_ns": _ns(a.entry_time),
            "entry_price": float(a.entry_price),
            "exit_ns": _ns(a.exit_time),
            "exit_price": float(a.exit_price),
            "note": a.note,
            "created_ns": _ns(a.created),
        }

    @staticmethod
    def _row(r: Any) -> Annotation:
        t = [pd.Timestamp(int(r[k]), tz="UTC") for k in (4, 6, 9)]
        return Annotation(r[1], r[2], r[3], t[0], r[5], t[1], r[7], r[8], r[0], t[2])

    def _get(self, con: Connection, id_: str) -> Annotation | None:
        r = con.execute(select(ANNOTATIONS).where(ANNOTATIONS.c.id == id_)).first()
        return None if r is None else self._row(r)

    def find(self, symbol: str | None = None, timeframe: str | None = None) -> list[Annotation]:
        """Stored annotations (optionally of one symbol / timeframe), by symbol then entry time."""
        c = ANNOTATIONS.c
        q = select(ANNOTATIONS).order_by(c.symbol, c.timeframe, c.entry_ns, c.id)
        if symbol is not None:
            q = q.where(c.symbol == symbol)
        if timeframe is not None:
            q = q.where(c.timeframe == timeframe)
        try:
            with self._db().connect() as con:
                rows = con.execute(q).all()
        except SQLAlchemyError as exc:
            raise self._error("be read", exc) from exc
        return [self._row(r) for r in rows]

    def remove(self, ids: Iterable[str]) -> int:
        """Remove the annotations with these ids (all must exist, or none is removed)."""
        ids = list(dict.fromkeys(ids))
        try:
            with writing(self._db()) as con:
                unknown = [i for i in ids if self._get(con, i) is None]
                if unknown:
                    raise AnnotationError(
                        f"no annotation with id(s) {unknown}; see `candleray annotate list`"
                    )
                if ids:
                    con.execute(ANNOTATIONS.delete().where(ANNOTATIONS.c.id.in_(ids)))
        except SQLAlchemyError as exc:
            raise self._error("remove the annotations", exc) from exc
        return len(ids)

    def export_json(self, symbol: str | None = None, timeframe: str | None = None) -> str:
        return json.dumps(
            {"annotations": [a.to_dict() for a in self.find(symbol, timeframe)]}, indent=1
        )

    def import_json(self, text: str) -> list[Annotation]:
        """Add the annotations of an export (``{"annotations": [...]}`` or a bare list)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"the file is not JSON ({exc}); give an annotate export") from exc
        items = doc.get("annotations") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise AnnotationError(
                'expected {"annotations": [{...}, ...]} (what `candleray annotate export` writes)'
            )
        return self.add_many([Annotation.parse(**i) for i in items])


__all__ = [
    "ANNOTATIONS",
    "SIDES",
    "Annotation",
    "AnnotationStore",
    "CandleLoader",
    "Samples",
    "candle_loader",
    "check_annotation",
    "check_annotation_config",
    "store_path",
    "to_samples",
]
