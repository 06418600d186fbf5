"""Annotations: trades a person marked on a chart, their store, and the samples they train.

An :class:`Annotation` is (symbol, timeframe, side, entry time and price, exit time and
price, note, created time) with an id. ``symbol`` is a spec without the timeframe
(``sample:EURUSD``, ``binance:BTC/USDT``), ``side`` is ``long`` or ``short``.

:class:`AnnotationStore` keeps them in one SQLite file (``annotations.path`` below
``run.home``): add, list (by symbol/timeframe), remove, export/import JSON. Before
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
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conf.schema import AnnotationConfig, Config, DataConfig
from pipelines.data.candles import timeframe_offset
from pipelines.data.dataset import Dataset
from pipelines.data.features import candle_targets, higher_timeframes, make_windows
from pipelines.data.labels import BUY, HOLD, SELL
from pipelines.data.sources import SymbolSpec, load_candles, parse_symbol
from pipelines.errors import AnnotationError, CandlerayError, ConfigError

logger = logging.getLogger(__name__)

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


def store_path(cfg: Config) -> Path:
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


_SCHEMA = """CREATE TABLE IF NOT EXISTS annotations (
    id TEXT PRIMARY KEY, symbol TEXT NOT NULL, timeframe TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('long', 'short')),
    entry_ns INTEGER NOT NULL, entry_price REAL NOT NULL,
    exit_ns INTEGER NOT NULL, exit_price REAL NOT NULL,
    note TEXT NOT NULL, created_ns INTEGER NOT NULL)"""


def _ns(ts: pd.Timestamp) -> int:
    return int(ts.as_unit("ns").value)


class AnnotationStore:
    """Annotations in the SQLite file ``path``, checked with candles from ``loader``."""

    def __init__(self, path: str | Path, *, loader: CandleLoader, tolerance: float) -> None:
        self.path = Path(path)
        self._loader = loader
        self._tolerance = tolerance

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        con.execute(_SCHEMA)
        return con

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
        with closing(self._connect()) as con, con:
            new = []
            for a in checked:
                old = self._get(con, a.id)
                if old is None:
                    new.append(a)
                elif old.to_dict() != a.to_dict():
                    raise AnnotationError(
                        f"annotation id {a.id} is already stored with other content; remove it "
                        "first or give the new one another id"
                    )
            con.executemany(
                "INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (a.id, a.symbol, a.timeframe, a.side, _ns(a.entry_time), a.entry_price)
                    + (_ns(a.exit_time), a.exit_price, a.note, _ns(a.created))
                    for a in new
                ],
            )
        return checked

    @staticmethod
    def _row(r: tuple) -> Annotation:
        t = [pd.Timestamp(int(r[k]), tz="UTC") for k in (4, 6, 9)]
        return Annotation(r[1], r[2], r[3], t[0], r[5], t[1], r[7], r[8], r[0], t[2])

    def _get(self, con: sqlite3.Connection, id_: str) -> Annotation | None:
        r = con.execute("SELECT * FROM annotations WHERE id = ?", (id_,)).fetchone()
        return None if r is None else self._row(r)

    def find(self, symbol: str | None = None, timeframe: str | None = None) -> list[Annotation]:
        """Stored annotations (optionally of one symbol / timeframe), by symbol then entry time."""
        where, args = [], []
        for col, val in (("symbol", symbol), ("timeframe", timeframe)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM annotations" + (f" WHERE {' AND '.join(where)}" if where else "")
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY symbol, timeframe, entry_ns, id", args).fetchall()
        return [self._row(r) for r in rows]

    def remove(self, ids: Iterable[str]) -> int:
        """Remove the annotations with these ids (all must exist, or none is removed)."""
        ids = list(dict.fromkeys(ids))
        with closing(self._connect()) as con, con:
            unknown = [i for i in ids if self._get(con, i) is None]
            if unknown:
                raise AnnotationError(
                    f"no annotation with id(s) {unknown}; see `candleray annotate list`"
                )
            con.executemany("DELETE FROM annotations WHERE id = ?", [(i,) for i in ids])
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


@dataclass
class Samples:
    """Training samples of some annotations, and the bars that could give none (why)."""

    data: Dataset
    skipped: list[str]


def _bars(a: Annotation, candles: pd.DataFrame) -> tuple[int, int] | str:
    """Positions of the trade's entry and exit candles, or why it has none in ``candles``.

    A stored trade was checked against the candles of its day; the loader's range may have
    moved since (``data.since``/``until``, a shorter synthetic series, another cache), so its
    bars may be missing now: that trade is skipped, and said so, while the others train."""
    pos = []
    for what, t in (("entry", a.entry_time), ("exit", a.exit_time)):
        i = int(candles.index.searchsorted(t))
        if i >= len(candles) or candles.index[i] != t:
            span = f"{candles.index[0]} .. {candles.index[-1]}" if len(candles) else "no candles"
            return (
                f"annotation {a.id}: its {what} bar {t} is not in the loaded candles of "
                f"{a.symbol}@{a.timeframe} (they open {span}); widen data.since/data.until (or "
                f"the series) to cover it, or `candleray annotate remove --id {a.id}`"
            )
        pos.append(i)
    return pos[0], pos[1]


def to_samples(annotations: Iterable[Annotation], loader: CandleLoader, cfg: Config) -> Samples:
    """One sample per trained bar: entry BUY/SELL, exit the opposite, HOLD between (if on)."""
    window = cfg.features.window
    keys: list[str] = []
    parts: list[Dataset] = []
    skipped: list[str] = []
    by_spec: dict[SymbolSpec, list[Annotation]] = {}
    for a in annotations:
        by_spec.setdefault(a.spec, []).append(a)
    for spec, group in by_spec.items():
        candles = loader(spec)
        higher = higher_timeframes(candles, spec.timeframe, cfg.data.extra_timeframes)
        ends, labels = [], []
        for a in group:
            bars = _bars(a, candles)
            if isinstance(bars, str):
                skipped.append(bars)
                continue
            i_e, i_x = bars
            first, last = (BUY, SELL) if a.side == "long" else (SELL, BUY)
            mid = list(range(i_e + 1, i_x)) if cfg.annotations.hold_between else []
            for i, y in [(i_e, first), *((i, HOLD) for i in mid), (i_x, last)]:
                if window - 1 <= i <= len(candles) - 2:
                    ends.append(i)
                    labels.append(y)
                else:
                    why = "no full window before it" if i < window - 1 else "no next candle"
                    skipped.append(f"annotation {a.id}: bar {candles.index[i]} has {why}")
        if not ends:
            continue
        e = np.asarray(ends, dtype=np.int64)
        x, sigma = make_windows(candles, window, higher, e)
        y_candle = candle_targets(candles, window, e, sigma)
        sid = np.full(len(e), len(keys), dtype=np.int32)
        times = candles.index.as_unit("ns").asi8[e]
        keys.append(spec.key)
        parts.append(Dataset(x, y_candle, np.asarray(labels, dtype=np.int64), sid, times))
    for s in skipped:
        logger.warning("%s: no training sample", s)
    if not parts:
        shown = "; ".join(skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        raise AnnotationError(
            f"the annotations give no training sample (each needs features.window={window} "
            "candles before its bars and a candle after, within the loaded candles); mark "
            f"trades later in the data. Skipped: {shown}"
        )
    return Samples(Dataset.concat(parts, tuple(keys)), skipped)
