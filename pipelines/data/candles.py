"""The one candle schema, its validator, gap report and timeframe helpers.

Every source returns, and every consumer accepts, a DataFrame with a UTC
``DatetimeIndex`` (named ``time``, sorted, unique; each stamp is the bar's
*open* time) and float64 columns ``open, high, low, close, volume``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.errors import CandleValidationError, ConfigError

COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

_TF_RE = re.compile(r"^(\d+)(m|h|d|w)$")
_TF_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
# the longest bar: a year of weeks. Longer ones overflow the nanosecond clock once a few
# hundred are laid end to end (99999w is ~1900 years), so they are refused wherever they come from
MAX_TIMEFRAME = "52w"
_MAX_TF_SECONDS = 52 * _TF_SECONDS["w"]


def timeframe_seconds(timeframe: str) -> int:
    """Seconds in a ccxt-style timeframe such as ``1m``, ``15m``, ``4h``, ``1d``, ``1w``."""
    m = _TF_RE.match(timeframe) if len(timeframe) <= 12 else None
    if not m or int(m.group(1)) <= 0:
        shown = timeframe if len(timeframe) <= 40 else timeframe[:40] + "..."
        raise ConfigError(
            f"timeframe {shown!r} is not understood; use <n><unit> with unit m, h, d or w "
            "(e.g. 1m, 15m, 1h, 4h, 1d)"
        )
    seconds = int(m.group(1)) * _TF_SECONDS[m.group(2)]
    if seconds > _MAX_TF_SECONDS:
        raise ConfigError(
            f"timeframe {timeframe!r} is longer than the longest bar, {MAX_TIMEFRAME}; "
            "use e.g. 1h, 4h, 1d or 1w"
        )
    return seconds


def timeframe_offset(timeframe: str) -> pd.Timedelta:
    return pd.Timedelta(seconds=timeframe_seconds(timeframe))


@dataclass(frozen=True, slots=True)
class Candle:
    """One closed candle, as feeds emit it and live sessions take it. ``time`` is its open time
    in ns since the epoch (UTC), as the schema's index holds it (``timestamp`` gives it back)."""

    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @classmethod
    def at(
        cls, time: pd.Timestamp | int, o: float, h: float, lo: float, c: float, v: float
    ) -> Candle:
        t = time if isinstance(time, int) else int(pd.Timestamp(time).as_unit("ns").value)
        return cls(t, float(o), float(h), float(lo), float(c), float(v))

    @property
    def timestamp(self) -> pd.Timestamp:
        return pd.Timestamp(self.time, tz="UTC")

    def values(self) -> tuple[float, float, float, float, float]:
        return (self.open, self.high, self.low, self.close, self.volume)


def empty_candles() -> pd.DataFrame:
    idx = pd.DatetimeIndex([], tz="UTC", name="time")
    return pd.DataFrame({c: pd.Series([], dtype="float64") for c in COLUMNS}, index=idx)


def normalize_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Lower-case column names and keep the schema's columns, as float64 (no validation)."""
    out = df.rename(columns={c: str(c).lower() for c in df.columns})
    missing = [c for c in COLUMNS if c not in out.columns]
    if missing:
        raise CandleValidationError(
            f"candles are missing column(s) {missing}; expected exactly {list(COLUMNS)}",
            rule="columns",
        )
    out = out.loc[:, list(COLUMNS)].astype("float64")
    idx = pd.DatetimeIndex(out.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    out.index = idx.rename("time")
    return out


def _fail(symbol: str, times_ns: np.ndarray, mask: np.ndarray, rule: str, what: str) -> None:
    pos = int(np.flatnonzero(mask)[0])
    stamp = pd.Timestamp(int(times_ns[pos]), tz="UTC")
    n = int(mask.sum())
    raise CandleValidationError(
        f"{symbol}: row {pos} ({stamp}) breaks rule '{rule}': {what}"
        + (f" ({n} rows in all)" if n > 1 else ""),
        symbol=symbol,
        row=pos,
        rule=rule,
    )


def validate_candles(df: pd.DataFrame, symbol: str = "?") -> pd.DataFrame:
    """Return ``df`` if it follows the schema; raise ``CandleValidationError`` naming the first bad row.

    Rules: exact columns, float dtype, UTC DatetimeIndex, finite values, prices > 0,
    high >= max(open, close, low), low <= min(open, close), volume >= 0,
    timestamps strictly increasing (no duplicates).
    """
    if not isinstance(df, pd.DataFrame):
        raise CandleValidationError(
            f"{symbol}: candles must be a pandas DataFrame, got {type(df).__name__}",
            symbol=symbol,
            rule="type",
        )
    cols = list(df.columns)
    if cols != list(COLUMNS):
        raise CandleValidationError(
            f"{symbol}: columns are {cols}; expected exactly {list(COLUMNS)} in that order "
            "(use pipelines.data.candles.normalize_columns to convert)",
            symbol=symbol,
            rule="columns",
        )
    if (
        not isinstance(df.index, pd.DatetimeIndex)
        or df.index.tz is None
        or str(df.index.tz) != "UTC"
    ):
        raise CandleValidationError(
            f"{symbol}: index must be a UTC DatetimeIndex, got {type(df.index).__name__} "
            f"tz={getattr(df.index, 'tz', None)}",
            symbol=symbol,
            rule="index",
        )
    for c in COLUMNS:
        if not pd.api.types.is_float_dtype(df[c].dtype):
            raise CandleValidationError(
                f"{symbol}: column {c!r} has dtype {df[c].dtype}; expected float64",
                symbol=symbol,
                rule="dtype",
            )
    if len(df):
        check_values(df.index.as_unit("ns").asi8, df.to_numpy(dtype="float64"), symbol)
    return df


def check_values(times_ns: np.ndarray, values: np.ndarray, symbol: str = "?") -> None:
    """The row rules of ``validate_candles`` on arrays: (N,) open times in ns since the epoch
    (UTC) and (N, 5) float64 o/h/l/c/v. Raises ``CandleValidationError`` naming the first bad
    row; the structural rules (columns, dtypes, index) are the frame's to check."""
    v = values
    o, h, low, c, vol = v.T
    _check = [
        (~np.isfinite(v).all(axis=1), "finite", "a value is NaN or infinite"),
        ((v[:, :4] <= 0).any(axis=1), "positive-price", "a price is zero or negative"),
        (h < np.maximum(o, c), "high-covers-open-close", "high is below open or close"),
        (low > np.minimum(o, c), "low-covers-open-close", "low is above open or close"),
        (vol < 0, "volume-non-negative", "volume is negative"),
    ]
    for mask, rule, what in _check:
        if mask.any():
            _fail(symbol, times_ns, mask, rule, what)
    d = np.diff(times_ns)
    if (d == 0).any():
        _fail(
            symbol,
            times_ns,
            np.r_[False, d == 0],
            "unique-timestamps",
            "timestamp repeats the previous row",
        )
    if (d < 0).any():
        _fail(
            symbol,
            times_ns,
            np.r_[False, d < 0],
            "sorted-timestamps",
            "timestamp is earlier than the previous row",
        )


@dataclass(frozen=True, slots=True)
class Gap:
    """Bars missing between ``after`` and ``before`` (both present)."""

    after: pd.Timestamp
    before: pd.Timestamp
    missing_bars: int


def find_gaps(df: pd.DataFrame, timeframe: str) -> list[Gap]:
    """Report gaps larger than one bar. Gaps are reported, never filled."""
    step = timeframe_seconds(timeframe) * 1_000_000_000
    t = df.index.as_unit("ns").asi8
    if len(t) < 2:
        return []
    d = np.diff(t)
    where = np.flatnonzero(d > step)
    return [Gap(df.index[i], df.index[i + 1], int(d[i] // step) - 1) for i in where]


def infer_timeframe(df: pd.DataFrame) -> str:
    """The most common bar spacing, as a timeframe string (for series without metadata)."""
    if len(df) < 2:
        raise CandleValidationError(
            "cannot infer a timeframe from fewer than 2 candles", rule="timeframe"
        )
    sec = int(pd.Series(np.diff(df.index.as_unit("ns").asi8)).mode().iloc[0] // 1_000_000_000)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if sec % size == 0:
            return f"{sec // size}{unit}"
    raise CandleValidationError(
        f"bar spacing of {sec}s is not a whole number of minutes", rule="timeframe"
    )


# Weeks start on Monday 00:00 UTC, as the weekly candles of the exchanges whose ccxt-style
# timeframes these are (and ISO weeks); 1970-01-05 is the first Monday after the epoch (a
# Thursday). Everything else is counted from the epoch itself.
_WEEK_ORIGIN_NS = 4 * 86400 * 1_000_000_000


def bin_starts(index: pd.DatetimeIndex, timeframe: str) -> pd.DatetimeIndex:
    """The open time of the ``timeframe`` bin holding each stamp, on one fixed grid.

    Bins are ``timeframe_seconds(timeframe)`` wide and counted from 1970-01-01 00:00 UTC
    (weeks: from Monday 1970-01-05), so a stamp falls in the same bin whatever the data's
    first stamp. (pandas' ``resample(origin="epoch")`` ignores the origin for day and week
    frequencies on a tz-aware index: 2d/3d bins started at the first data day, and weeks
    on Sunday.)
    """
    starts = bin_starts_ns(index.as_unit("ns").asi8, timeframe)
    return pd.DatetimeIndex(starts.astype("datetime64[ns]"), name=index.name).tz_localize("UTC")


def bin_starts_ns(times_ns: np.ndarray, timeframe: str) -> np.ndarray:
    """``bin_starts`` on open times in ns since the epoch (UTC)."""
    width = timeframe_seconds(timeframe) * 1_000_000_000
    origin = _WEEK_ORIGIN_NS if timeframe.endswith("w") else 0
    return (times_ns - origin) // width * width + origin  # floor division: right for pre-1970 too


def resample(df: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Aggregate candles to a coarser timeframe on the fixed grid of ``bin_starts``.

    ``df`` follows the schema (sorted). Each output bar is stamped with its bin's open time;
    bins with no input bar are left out (gaps stay gaps). The first and last bins may hold
    only part of their span.
    """
    times, values = resample_values(
        df.index.as_unit("ns").asi8, df[list(COLUMNS)].to_numpy(dtype="float64"), timeframe
    )
    if len(times) == 0:
        return empty_candles()
    index = pd.DatetimeIndex(times.astype("datetime64[ns]"), name="time").tz_localize("UTC")
    return pd.DataFrame(values, index=index, columns=list(COLUMNS))


def resample_values(
    times_ns: np.ndarray, values: np.ndarray, timeframe: str
) -> tuple[np.ndarray, np.ndarray]:
    """``resample`` on arrays: (N,) open times (ns) and (N, 5) o/h/l/c/v → the same for the
    coarser bars."""
    starts = bin_starts_ns(times_ns, timeframe)
    if len(starts) == 0:
        return starts, np.zeros((0, len(COLUMNS)))
    first = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])  # (B,) first row of each bin
    last = np.r_[first[1:], len(starts)] - 1
    out = np.column_stack(
        [
            values[first, 0],
            np.maximum.reduceat(values[:, 1], first),
            np.minimum.reduceat(values[:, 2], first),
            values[last, 3],
            np.add.reduceat(values[:, 4], first),
        ]
    )
    return starts[first], out


def align_higher_timeframe(
    base: pd.DataFrame, base_tf: str, higher: pd.DataFrame, higher_tf: str
) -> pd.DataFrame:
    """For each base bar, the last *closed* higher-timeframe candle, as of that base bar's close.

    A higher candle opened at T closes at T + higher_tf; a base bar opened at t closes at
    t + base_tf. The higher candle is visible to the base bar only when
    T + higher_tf <= t + base_tf, so nothing from the future leaks in. Rows with no closed
    higher candle yet are NaN.
    """
    out = align_values(
        base.index.as_unit("ns").asi8,
        base_tf,
        higher.index.as_unit("ns").asi8,
        higher.to_numpy(dtype="float64"),
        higher_tf,
    )
    return pd.DataFrame(out, index=base.index, columns=list(COLUMNS))


def align_values(
    base_ns: np.ndarray,
    base_tf: str,
    higher_ns: np.ndarray,
    higher_values: np.ndarray,
    higher_tf: str,
) -> np.ndarray:
    """``align_higher_timeframe`` on arrays: open times (ns) of the base bars and of the higher
    bars with the higher bars' (H, 5) values → (N, 5), NaN where no higher candle has closed."""
    if timeframe_seconds(higher_tf) <= timeframe_seconds(base_tf):
        raise ConfigError(
            f"higher timeframe {higher_tf!r} must be coarser than the base {base_tf!r}"
        )
    close_h = higher_ns + timeframe_seconds(higher_tf) * 1_000_000_000
    close_b = base_ns + timeframe_seconds(base_tf) * 1_000_000_000
    # position of the last higher candle whose close time <= base close time
    pos = np.searchsorted(close_h, close_b, side="right") - 1
    out = np.full((len(base_ns), len(COLUMNS)), np.nan)
    ok = pos >= 0
    out[ok] = higher_values[pos[ok]]
    return out
