"""The portfolio view of a many-symbol backtest: capital split evenly, equity curves combined.

Each symbol is backtested on its own capital (``backtest.cash``). The portfolio puts
``cash / n`` in each of the n symbols that ran, each sleeve a scaled copy of that symbol's
backtest, so its value is the average of the normalised curves ``E_s(t) / cash_s`` times
``cash``. (With ``units: whole`` a sleeve of cash / n could buy other whole numbers of units
than the full-cash run; the scaled copy is what is reported.)

A backtest's equity is stamped with each bar's *open* time but is the value at its *close*.
Given each curve's timeframe, ``combine`` re-stamps it at the bar close (open + timeframe),
the time its value is known, before aligning: otherwise a daily symbol's end-of-day value
would show at 00:00 of that day among hourly stamps, a day early (look-ahead). The
portfolio's stamps are therefore close times.

Curves are aligned on the union of their (close) timestamps: a symbol's value is carried
forward (forward fill) between and after its bars; before its first bar closes it is still
all cash (normalised value 1). Symbols of different timeframes or ranges thus combine
without gaps and without look-ahead. Statistics follow ``pipelines.backtest.stats``
(fractions, risk-free rate 0, NaN when undefined); Sharpe is annualised with the bars per
year of the union index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest.stats import infer_bars_per_year
from pipelines.data.candles import timeframe_offset
from pipelines.errors import BacktestError


@dataclass(frozen=True)
class Portfolio:
    """equity: combined value on the union of timestamps; shares: capital share per symbol."""

    equity: pd.Series
    shares: dict[str, float]
    stats: dict[str, Any]


def combine_equity(
    curves: Mapping[str, pd.Series],
    initial_cash: Mapping[str, float],
    cash: float,
    timeframes: Mapping[str, str],
) -> pd.Series:
    """``cash`` x the mean over symbols of ``curve / initial_cash``, on the union of timestamps.

    timeframes: each curve's bar timeframe; its stamps are bar opens (as every
    ``BacktestResult.equity``), so the curve is shifted to its bar closes first. Required:
    a default that skipped the shift would put a daily value a day early among hourly ones.
    """
    if not curves:
        raise BacktestError("no equity curves to combine: every symbol failed")
    missing = sorted(set(curves) - set(timeframes))
    if missing:
        raise BacktestError(
            f"no timeframe for equity curve(s) {missing}; give one per curve, "
            "e.g. timeframes={'A': '1d', 'B': '1h'}"
        )
    curves = {k: c.set_axis(c.index + timeframe_offset(timeframes[k])) for k, c in curves.items()}
    norm = pd.concat(
        {k: c / float(initial_cash[k]) for k, c in curves.items()}, axis=1
    ).sort_index()
    norm = norm.ffill().fillna(1.0)  # carried forward; all cash before a symbol's first bar
    out = cash * norm.mean(axis=1)
    out.name = "equity"
    return out


def portfolio_stats(
    equity: pd.Series, cash: float, bars_per_year: float | None = None
) -> dict[str, Any]:
    """total_return, max_drawdown, sharpe (annualised), annual_volatility, bars, start, end."""
    e = equity.to_numpy(dtype=np.float64)
    p = infer_bars_per_year(equity.index) if bars_per_year is None else float(bars_per_year)
    r = e[1:] / e[:-1] - 1 if len(e) > 1 else np.empty(0)
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else math.nan
    mean = float(np.mean(r)) if len(r) else math.nan
    sharpe = mean / sd * math.sqrt(p) if sd and math.isfinite(sd) and math.isfinite(p) else math.nan
    peak = np.maximum.accumulate(e)
    return {
        "start": equity.index[0],
        "end": equity.index[-1],
        "bars": int(len(e)),
        "bars_per_year": float(p),
        "initial_cash": float(cash),
        "final_equity": float(e[-1]),
        "total_return": float(e[-1] / cash - 1),
        "max_drawdown": float(np.max(1 - e / peak)),
        "sharpe": float(sharpe),
        "annual_volatility": float(sd * math.sqrt(p)) if math.isfinite(sd) else math.nan,
    }


def combine(
    curves: Mapping[str, pd.Series],
    initial_cash: Mapping[str, float],
    cash: float,
    bars_per_year: float | None = None,
    *,
    timeframes: Mapping[str, str],
) -> Portfolio:
    """The even-split portfolio; ``timeframes`` as in ``combine_equity``."""
    equity = combine_equity(curves, initial_cash, cash, timeframes)
    shares = {k: 1.0 / len(curves) for k in curves}
    return Portfolio(
        equity, shares, {"symbols": len(curves), **portfolio_stats(equity, cash, bars_per_year)}
    )
