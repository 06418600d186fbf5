"""Statistics of a backtest, each one defined in its docstring line and in docs/BACKTEST.md.

Conventions: returns and drawdowns are fractions (0.05 = 5 %), not percent; the risk-free
rate is 0; a ratio whose denominator is zero or undefined is NaN. Per-bar statistics use the
simple returns of the equity curve, ``r_t = E_t / E_(t-1) - 1`` for t = 1..N-1, and are
annualised with ``bars_per_year`` (``P``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pandas as pd

_DAY_NS = 86_400 * 10**9
_YEAR_DAYS = 365.25
TRADING_DAYS = 252  # sessions per year of markets closed at weekends (NYSE-style)
_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_INT64_MAX = 2**63 - 1
_EXP_MAX = math.log(sys.float_info.max)  # exp() of more than this is past float range


def index_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """A sorted index as int64 ns since the epoch: ``index.as_unit("ns").asi8``, without building
    a new index when it is stored in another unit (pandas 3 stores ``date_range`` in us).

    Sorted, so its first and last values bound the others (checked for the ns range).
    """
    raw = index.asi8
    factor = _NS_PER.get(index.unit, 0)
    if factor == 1:
        return raw
    bound = _INT64_MAX // factor if factor else 0
    if not len(raw) or not (-bound <= int(raw[0]) and int(raw[-1]) <= bound):
        return index.as_unit("ns").asi8  # out of the ns range: pandas raises its own error
    return raw * factor


def infer_bars_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year of a candle index, from its median bar spacing.

    * spacing of 28-31 days (monthly bars): 12;
    * spacing over a day (weekly, 2-day ...): 365.25 days / spacing;
    * spacing of a day or less, at least a week of data and (almost) no bars on Saturday or
      Sunday (weekend share at most 60 % of the 2/7 a 24/7 market has: equities, forex): 252
      trading days x the median number of bars per trading day (1 for daily GOOG, 24 for
      hourly forex, 7 for hourly stocks);
    * otherwise (24/7 markets such as crypto, or under a week of data): 365.25 days / spacing
      (8766 for 1h, 365.25 for 1d).

    Sessions with holidays or odd hours are only approximated: pass ``bars_per_year`` to be exact.
    """
    return bars_per_year_of(index_ns(index))


def bars_per_year_of(t: np.ndarray) -> float:
    """``infer_bars_per_year`` of the bar times ``t`` (N,), int64 nanoseconds since the epoch."""
    if len(t) < 2:
        return float("nan")
    spacing = float(np.median(np.diff(t)))
    if spacing <= 0:
        return float("nan")
    if 28 * _DAY_NS <= spacing <= 31 * _DAY_NS:
        return 12.0
    if spacing > _DAY_NS:
        return _YEAR_DAYS * _DAY_NS / spacing
    day = t // _DAY_NS  # (N,) days since 1970-01-01, a Thursday
    starts = np.concatenate(([0], np.flatnonzero(day[1:] != day[:-1]) + 1))  # first bar of each day
    bars_per_day = np.diff(starts, append=len(t))
    weekend = (day[starts] + 3) % 7 >= 5  # Monday = 0, as pandas' dayofweek
    weekend_share = float(bars_per_day[weekend].sum()) / len(t)
    if t[-1] - t[0] >= 7 * _DAY_NS and weekend_share <= 2 / 7 * 0.6:
        return TRADING_DAYS * float(np.median(bars_per_day))
    return _YEAR_DAYS * _DAY_NS / spacing


def compute_stats(
    *,
    equity: np.ndarray,
    index: pd.DatetimeIndex,
    close: np.ndarray,
    cash: float,
    pnl: np.ndarray,
    returns: np.ndarray,
    held_from: np.ndarray,
    held_to: np.ndarray,
    commissions: float,
    bars_per_year: float,
    t_ns: np.ndarray | None = None,
) -> dict[str, Any]:
    """All statistics of one run, in report order.

    ``equity`` (N,) is per bar close; ``pnl`` and ``returns`` (T,) are of closed trades in
    order; ``held_from``/``held_to`` are the first and last bar (inclusive) of every trade,
    closed or still open, for exposure. ``t_ns``: the index as int64 ns, when at hand.
    """
    n = len(equity)
    if t_ns is None:
        t_ns = index_ns(index)
    span = int(t_ns[-1] - t_ns[0])
    s: dict[str, Any] = {}
    s["start"] = index[0]
    s["end"] = index[-1]
    s["duration"] = pd.Timedelta(span, unit="ns")
    s["bars"] = n
    s["bars_per_year"] = float(bars_per_year)
    s["initial_cash"] = float(cash)
    final = float(equity[-1])
    s["final_equity"] = final
    peak = np.maximum.accumulate(equity)  # (N,) running peak; the last one is the highest
    s["peak_equity"] = float(peak[-1])
    s["total_return"] = final / cash - 1
    s["buy_hold_return"] = float(close[-1] / close[0] - 1)
    years = span / (_YEAR_DAYS * _DAY_NS)
    s["cagr"] = _growth(final / cash, 1 / years) if years > 0 else math.nan

    if equity.min() > 0:
        r = np.divide(equity[1:], equity[:-1])  # (N-1,)
        r -= 1
    else:  # wiped out: no capital, no return from there on
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(equity[:-1] > 0, equity[1:] / equity[:-1] - 1, 0.0)
    p = float(bars_per_year)
    e0 = float(equity[0])
    s["annual_return"] = _growth(final / e0, p / len(r)) if e0 > 0 else math.nan
    # mean and std(ddof=1) as np.mean / np.std compute them, sharing the mean and one buffer
    m = len(r)
    mean = float(np.add.reduce(r)) / m
    x = np.subtract(r, mean)
    sd = math.sqrt(float(np.add.reduce(np.multiply(x, x, out=x))) / (m - 1)) if m > 1 else math.nan
    s["annual_volatility"] = sd * math.sqrt(p)
    s["sharpe"] = _ratio(mean * math.sqrt(p), sd)
    np.minimum(r, 0.0, out=x)
    downside = math.sqrt(float(np.add.reduce(np.multiply(x, x, out=x))) / m)
    s["sortino"] = _ratio(mean * math.sqrt(p), downside)

    dd = np.divide(equity, peak)  # the peak is >= the starting equity > 0
    np.subtract(1, dd, out=dd)
    max_dd = float(dd.max())
    s["max_drawdown"] = max_dd
    s["calmar"] = _ratio(s["annual_return"], max_dd)
    dur_bars, dur_ns, depth = _drawdown_periods(dd, t_ns)
    some = len(depth) > 0
    s["max_drawdown_duration"] = pd.Timedelta(int(dur_ns.max()) if some else 0, unit="ns")
    s["max_drawdown_bars"] = int(dur_bars.max()) if some else 0
    s["avg_drawdown"] = float(depth.mean()) if some else math.nan
    s["avg_drawdown_duration"] = pd.Timedelta(round(float(dur_ns.mean())) if some else 0, unit="ns")

    t = len(pnl)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    win_rate = len(wins) / t if t else math.nan
    s["n_trades"] = t
    s["win_rate"] = win_rate
    s["best_trade"] = float(returns.max()) if t else math.nan
    s["worst_trade"] = float(returns.min()) if t else math.nan
    s["avg_trade"] = float(returns.mean()) if t else math.nan
    s["profit_factor"] = _ratio(float(wins.sum()), -float(losses.sum())) if t else math.nan
    s["expectancy"] = float(pnl.mean()) if t else math.nan
    pnl_sd = float(np.std(pnl, ddof=1)) if t > 1 else math.nan
    s["sqn"] = _ratio(math.sqrt(t) * float(pnl.mean()), pnl_sd) if t > 1 else math.nan
    if len(wins) and len(losses):
        payoff = float(wins.mean()) / -float(losses.mean())
        s["kelly"] = win_rate - (1 - win_rate) / payoff
    else:
        s["kelly"] = math.nan
    s["exposure"] = _exposure(held_from, held_to, n)
    s["commissions"] = float(commissions)
    s["max_consecutive_wins"] = _longest_run(pnl > 0)
    s["max_consecutive_losses"] = _longest_run(pnl < 0)
    return s


def _growth(multiple: float, power: float) -> float:
    """multiple ** power - 1: -1 for a wiped-out account (multiple <= 0), +inf past float range.

    Computed in log space, exp(power x ln multiple) - 1, because annualising a short range of
    fast bars raises to a power in the thousands (1.09 ** 8766 after +9 % in an hour of
    1-minute bars), which ``**`` refuses with OverflowError. A growth rate past float range is
    still a growth rate: +inf, as ``np.float64`` would give; a loss compounds towards -1.
    """
    if multiple <= 0:
        return -1.0
    x = power * math.log(multiple)
    return math.expm1(x) if x < _EXP_MAX else math.inf


def _ratio(num: float, den: float) -> float:
    if not den or not math.isfinite(den) or not math.isfinite(num):
        return math.nan
    return num / den


def _drawdown_periods(
    dd: np.ndarray, t_ns: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per drawdown period: bars and ns from the peak to recovery (or the last bar), and depth.

    A period is a run of bars below the running peak; it starts at the peak bar before the run
    and ends at the first bar back at the peak, or at the last bar if equity never got back.
    """
    below = dd > 0  # False on bar 0, which is its own peak
    flips = np.flatnonzero(below[1:] != below[:-1]) + 1  # alternately: first bar below, first back
    starts, stops = flips[0::2], flips[1::2]
    if len(stops) < len(starts):
        stops = np.append(stops, len(dd))  # the last drawdown has not recovered
    peaks = starts - 1
    ends = np.minimum(stops, len(dd) - 1)
    depth = np.maximum.reduceat(dd, starts) if len(starts) else np.empty(0)
    return ends - peaks, t_ns[ends] - t_ns[peaks], depth


def _exposure(held_from: np.ndarray, held_to: np.ndarray, n: int) -> float:
    """Share of bars on which a position was held (entry bar to exit bar, both included).

    Trades are sequential (one position at a time); a reversal's bar ends one trade and starts
    the next, and is counted once.
    """
    if not len(held_from):
        return 0.0
    bars = int(np.sum(held_to - held_from + 1)) - int(
        np.count_nonzero(held_to[:-1] == held_from[1:])
    )
    return bars / n


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(mask.view(np.int8), prepend=0, append=0)
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
