"""Backtest statistics on a hand-computed equity curve, and the bars-per-year inference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_backtest_simulator import run, six_candles

from pipelines.backtest import simulate
from pipelines.backtest.stats import compute_stats, infer_bars_per_year


@pytest.fixture
def candles() -> pd.DataFrame:
    return six_candles()


# --- statistics on a known equity curve ---------------------------------------------------------


def test_stats_on_a_hand_computed_case():
    idx = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")  # 24/7 daily: 365.25 bars/yr
    equity = np.array([100.0, 110.0, 99.0, 120.0, 108.0])
    pnl = np.array([10.0, 20.0, -5.0, -10.0, -3.0, 0.0, 4.0])  # W W L L L - W
    ret = pnl / 100
    s = compute_stats(
        equity=equity,
        index=idx,
        close=np.array([10.0, 11, 12, 13, 15]),
        cash=100.0,
        pnl=pnl,
        returns=ret,
        held_from=np.array([0, 3]),
        held_to=np.array([1, 3]),
        commissions=1.5,
        bars_per_year=365.25,
    )
    r = np.array([0.1, -0.1, 120 / 99 - 1, -0.1])
    assert s["total_return"] == pytest.approx(0.08)
    assert s["final_equity"] == 108 and s["peak_equity"] == 120
    assert s["buy_hold_return"] == pytest.approx(0.5)
    assert s["cagr"] == pytest.approx(1.08 ** (365.25 / 4) - 1)
    assert s["annual_return"] == pytest.approx(1.08 ** (365.25 / 4) - 1)
    sd = math.sqrt(((r - r.mean()) ** 2).sum() / 3)
    assert s["annual_volatility"] == pytest.approx(sd * math.sqrt(365.25))
    assert s["sharpe"] == pytest.approx(r.mean() / sd * math.sqrt(365.25))
    assert s["sortino"] == pytest.approx(
        r.mean() / math.sqrt((0.01 + 0.01) / 4) * math.sqrt(365.25)
    )
    assert s["max_drawdown"] == pytest.approx(0.1)  # 110 -> 99 and 120 -> 108
    assert s["calmar"] == pytest.approx(s["annual_return"] / 0.1)
    assert s["max_drawdown_bars"] == 2 and s["max_drawdown_duration"] == pd.Timedelta(days=2)
    assert s["avg_drawdown"] == pytest.approx(0.1)
    assert s["n_trades"] == 7 and s["win_rate"] == pytest.approx(3 / 7)
    assert (s["best_trade"], s["worst_trade"]) == (0.2, -0.1)
    assert s["avg_trade"] == pytest.approx(16 / 700)
    assert s["profit_factor"] == pytest.approx(34 / 18)
    assert s["expectancy"] == pytest.approx(16 / 7)
    assert s["sqn"] == pytest.approx(math.sqrt(7) * pnl.mean() / pnl.std(ddof=1))
    assert s["kelly"] == pytest.approx(3 / 7 - (4 / 7) / ((34 / 3) / 6))
    assert s["exposure"] == pytest.approx(3 / 5)
    assert s["commissions"] == 1.5
    assert (s["max_consecutive_wins"], s["max_consecutive_losses"]) == (2, 3)


def test_stats_without_trades_are_nan_not_errors(candles):
    s = run(candles, [0] * 6).stats
    assert s["n_trades"] == 0 and s["exposure"] == 0 and s["max_drawdown"] == 0
    nan_keys = (
        "win_rate",
        "profit_factor",
        "sqn",
        "kelly",
        "sharpe",
        "sortino",
        "calmar",
        "best_trade",
    )
    assert [k for k in nan_keys if not math.isnan(s[k])] == []


@pytest.mark.parametrize(
    ("freq", "weekdays_only", "expected"),
    [
        ("1D", True, 252.0),  # equities: trading days
        ("1D", False, 365.25),  # crypto
        ("1h", False, 8766.0),
        ("1h", True, 252.0 * 24),  # forex 24x5
        ("1min", False, 525_960.0),
        ("7D", False, 365.25 / 7),
    ],
)
def test_bars_per_year_from_the_candles_spacing(freq, weekdays_only, expected):
    idx = pd.date_range("2024-01-01", "2024-03-01", freq=freq, tz="UTC", inclusive="left")
    if weekdays_only:
        idx = idx[idx.dayofweek < 5]
    assert infer_bars_per_year(idx) == pytest.approx(expected)


def test_bars_per_year_of_the_shipped_samples_and_of_a_short_sample():
    from backtesting.test import EURUSD, GOOG

    assert infer_bars_per_year(GOOG.index.tz_localize("UTC")) == 252.0  # daily NASDAQ
    assert infer_bars_per_year(EURUSD.index.tz_localize("UTC")) == 252.0 * 24  # hourly forex, 24x5
    # under a week of data cannot show whether weekends trade: the 24/7 rule applies
    one_day = pd.date_range("2024-01-02", periods=1440, freq="1min", tz="UTC")
    assert infer_bars_per_year(one_day) == pytest.approx(525_960.0)


# --- growth rates beyond float range ------------------------------------------------------------


def _one_hour_ramp(end: float) -> tuple[pd.DataFrame, np.ndarray]:
    """60 one-minute candles whose close goes from 100 to ``end``; BUY on bar 0."""
    idx = pd.date_range("2024-01-01", periods=60, freq="1min", tz="UTC", name="time")
    close = np.linspace(100, end, 60)
    open_ = np.r_[100, close[:-1]]
    df = pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close),
            "low": np.minimum(open_, close),
            "close": close,
            "volume": 1.0,
        },
        index=idx,
    )
    sig = np.zeros(60, dtype=np.int8)
    sig[0] = 1
    return df, sig


def test_a_gain_on_a_short_fast_range_compounds_to_inf_not_an_error():
    # +9 % in an hour of 1-minute bars compounds to about 1.09 ** 8766 a year: past float range
    df, sig = _one_hour_ramp(109.0)
    s = simulate(df, sig, units="fractional").stats
    assert s["total_return"] == pytest.approx(0.09)  # bought at 100 (bar 1 open), marked at 109
    assert s["cagr"] == math.inf and s["annual_return"] == math.inf
    assert math.isnan(s["calmar"])  # a ratio with an infinite numerator is NaN, as documented
    assert math.isfinite(s["sharpe"]) and math.isfinite(s["annual_volatility"])


def test_a_loss_on_a_short_fast_range_compounds_to_minus_one():
    df, sig = _one_hour_ramp(91.0)
    s = simulate(df, sig, units="fractional").stats
    assert s["total_return"] < 0
    assert s["cagr"] == -1.0 and s["annual_return"] == -1.0


def test_growth_in_float_range_is_unchanged_by_the_log_space_form():
    idx = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")
    s = compute_stats(
        equity=np.array([100.0, 101.0, 102.0]),
        index=idx,
        close=np.array([1.0, 1.0, 1.0]),
        cash=100.0,
        pnl=np.empty(0),
        returns=np.empty(0),
        held_from=np.empty(0, dtype=np.int64),
        held_to=np.empty(0, dtype=np.int64),
        commissions=0.0,
        bars_per_year=365.25,
    )
    assert s["cagr"] == pytest.approx(1.02 ** (365.25 / 2) - 1, rel=1e-12)
    assert s["annual_return"] == pytest.approx(1.02 ** (365.25 / 2) - 1, rel=1e-12)
