"""Checks and conversions of what ``simulate`` is given, done before anything runs.

Signals become one int8 array aligned with the candles: 1 = BUY, -1 = SELL, 0 = HOLD.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from pipelines.backtest.stats import index_ns
from pipelines.data.candles import COLUMNS, validate_candles
from pipelines.errors import BacktestError

BUY, SELL, HOLD = 1, -1, 0
SIGNAL_NAMES: dict[str, int] = {"BUY": BUY, "SELL": SELL, "HOLD": HOLD}
_ALLOWED = "1 or 'BUY', -1 or 'SELL', 0 or 'HOLD'"


def check_candles(candles: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """The candles if they follow the schema and have at least 2 bars (else an error naming the rule)."""
    validate_candles(candles, symbol)
    if len(candles) < 2:
        raise BacktestError(
            f"{symbol}: a backtest needs at least 2 candles, got {len(candles)}; "
            "pass a longer range of candles"
        )
    return candles


def candle_arrays(candles: pd.DataFrame, symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps in ns, open, close) of candles that pass ``check_candles``; else its error.

    The same rules as ``check_candles``, in fewer passes over the data: NaN, -inf and signs
    show in the column minima; +inf in high's or volume's maximum (an infinite open, low or
    close forces an infinite high). Anything that looks wrong goes through ``check_candles``,
    which names the rule and the row.
    """
    ok = (
        isinstance(candles, pd.DataFrame)
        and len(candles) >= 2
        and tuple(candles.columns) == COLUMNS
        and isinstance(candles.index, pd.DatetimeIndex)
        and str(candles.index.tz) == "UTC"
        and all(pd.api.types.is_float_dtype(d) for d in candles.dtypes.tolist())
    )
    if ok:
        v = candles.to_numpy(dtype=np.float64)  # (N, 5)
        o, h, low, c, vol = v.T
        raw = candles.index.asi8
        lo = v.min(axis=0)  # (5,)
        ok = (
            bool(np.isfinite(lo).all() and np.isfinite(h.max() + vol.max()))
            and bool((lo[:4] > 0).all())
            and lo[4] >= 0
            and bool((h >= np.maximum(o, c)).all())
            and bool((low <= np.minimum(o, c)).all())
            and bool((raw[1:] > raw[:-1]).all())
        )
    if not ok:
        check_candles(candles, symbol)  # raises, naming the rule and the row
        v = candles.to_numpy(dtype=np.float64)
    return index_ns(candles.index), v[:, 0], v[:, 3]


def coerce_signals(signals: object, index: pd.DatetimeIndex, symbol: str) -> np.ndarray:
    """Signals as an int8 array of 1/-1/0, one per candle; ``BacktestError`` if they do not fit.

    Accepted: a 1-D array or list, or a Series whose index is exactly the candles' index, of
    integers 1/-1/0 (floats that equal them are fine) or strings BUY/SELL/HOLD (any case).
    """
    n = len(index)
    if isinstance(signals, pd.DataFrame):
        raise BacktestError(
            f"{symbol}: signals must be one column (a Series or 1-D array), got a DataFrame with "
            f"columns {list(signals.columns)}; pass e.g. frame['signal']"
        )
    if isinstance(signals, pd.Series):
        _check_series_index(signals, index, symbol)
        arr = signals.to_numpy()
    elif isinstance(signals, (np.ndarray, list, tuple)):
        arr = np.asarray(signals)
    else:
        raise BacktestError(
            f"{symbol}: signals must be a pandas Series, NumPy array or list, got "
            f"{type(signals).__name__}; pass one value ({_ALLOWED}) per candle"
        )
    if arr.ndim != 1:
        raise BacktestError(
            f"{symbol}: signals must be 1-D (one value per candle), got shape {arr.shape}; "
            "flatten them or pick one column"
        )
    if len(arr) != n:
        raise BacktestError(
            f"{symbol}: got {len(arr)} signals for {n} candles; they must be aligned one per "
            "candle (e.g. signals.reindex(candles.index, fill_value=0))"
        )
    kind = arr.dtype.kind
    if kind == "b":
        raise BacktestError(
            f"{symbol}: signals are booleans, which do not say BUY or SELL; use {_ALLOWED} "
            "(e.g. np.where(mask, 1, 0))"
        )
    if kind in "iu":
        bad = (arr < -1) | (arr > 1)
        if bad.any():
            _fail_values(arr, bad, index, symbol)
        return arr.astype(np.int8)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isin(arr, (-1.0, 0.0, 1.0))
        if bad.any():
            _fail_values(arr, bad, index, symbol)
        return arr.astype(np.int8)
    if kind in "OUS":
        return _coerce_labels(arr, index, symbol)
    raise BacktestError(
        f"{symbol}: signals have dtype {arr.dtype}, which is not understood; use integers or "
        f"strings ({_ALLOWED})"
    )


def _check_series_index(signals: pd.Series, index: pd.DatetimeIndex, symbol: str) -> None:
    if signals.index is index or signals.index.equals(index):
        return
    if len(signals) != len(index):
        raise BacktestError(
            f"{symbol}: got {len(signals)} signals for {len(index)} candles; they must be "
            "aligned one per candle (e.g. signals.reindex(candles.index, fill_value=0))"
        )
    try:
        differs = np.asarray(signals.index != index, dtype=bool)
    except (TypeError, ValueError):  # e.g. tz-naive vs tz-aware: every position differs
        differs = np.ones(len(index), dtype=bool)
    pos = int(np.flatnonzero(differs)[0]) if differs.any() else 0
    raise BacktestError(
        f"{symbol}: the signals' index is not the candles' index (first difference at position "
        f"{pos}: signal {signals.index[pos]!r} vs candle {index[pos]!r}); align them with "
        "signals.reindex(candles.index, fill_value=0), or pass signals.to_numpy() if they are "
        "already in candle order"
    )


def _coerce_labels(arr: np.ndarray, index: pd.DatetimeIndex, symbol: str) -> np.ndarray:
    # factorize hashes the few distinct labels once instead of comparing every string
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    lookup = np.zeros(len(uniques), dtype=np.int8)
    ok = np.ones(len(uniques), dtype=bool)
    for k, u in enumerate(uniques):
        value = _label_value(u)
        if value is None:
            ok[k] = False
        else:
            lookup[k] = value
    bad = codes < 0
    if not ok.all():
        bad |= np.isin(codes, np.flatnonzero(~ok))
    if bad.any():
        _fail_values(arr, bad, index, symbol)
    return lookup[codes]


def _label_value(u: object) -> int | None:
    if isinstance(u, str):
        text = u.strip().upper()
        # a list mixing ints and names arrives as strings: "1", "-1", "0" are the ints
        return SIGNAL_NAMES.get(text, {"1": BUY, "-1": SELL, "0": HOLD}.get(text))
    if isinstance(u, bytes):
        return SIGNAL_NAMES.get(u.decode(errors="replace").strip().upper())
    if isinstance(u, numbers.Real) and not isinstance(u, bool) and u in (-1, 0, 1):
        return int(float(u))  # numbers.Real promises __float__, not __int__
    return None


def _fail_values(arr: np.ndarray, bad: np.ndarray, index: pd.DatetimeIndex, symbol: str) -> None:
    where = np.flatnonzero(bad)
    pos = int(where[0])
    shown: list[object] = []
    for v in arr[where[:1000]]:
        if not any(v is s or v == s for s in shown):
            shown.append(v)
        if len(shown) == 5:
            break
    raise BacktestError(
        f"{symbol}: signals contain {len(where)} unknown value(s) such as "
        f"{[_plain(v) for v in shown]} (first at position {pos}, {index[pos]}); allowed are "
        f"{_ALLOWED}; map your model's output to these first"
    )


def _plain(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v
