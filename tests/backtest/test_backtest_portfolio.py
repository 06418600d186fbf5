"""The portfolio view over symbols of different timeframes: no value shows before it is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from actors import spec_from_config
from pipelines.backtest import simulate
from pipelines.backtest.portfolio import combine
from pipelines.backtest.runner import BacktestJob, run_in_process
from pipelines.backtest.weights import BacktestWeights
from pipelines.errors import BacktestError
from pipelines.model.trainer import Trainer

UTC = "UTC"


def candles(idx: pd.DatetimeIndex, close) -> pd.DataFrame:
    close = np.asarray(close, float)
    o = np.r_[close[0], close[:-1]]
    return pd.DataFrame(
        {
            "open": o,
            "high": np.maximum(o, close),
            "low": np.minimum(o, close),
            "close": close,
            "volume": 1.0,
        },
        index=idx.rename("time"),
    )


def daily_and_hourly(day1_close: float) -> pd.Series:
    """A daily symbol, long from day 0's close, and an idle hourly one, over three days."""
    days = pd.date_range("2024-01-01", periods=3, freq="1D", tz=UTC)
    daily = simulate(
        candles(days, [100.0, day1_close, day1_close]), [1, 0, 0], fill="close", units="fractional"
    )
    hours = pd.date_range("2024-01-01", periods=72, freq="1h", tz=UTC)
    hourly = simulate(candles(hours, np.full(72, 50.0)), np.zeros(72, int), units="fractional")
    return combine(
        {"D": daily.equity, "H": hourly.equity},
        {"D": 10_000.0, "H": 10_000.0},
        10_000.0,
        timeframes={"D": "1d", "H": "1h"},
    ).equity


def test_a_daily_result_shows_only_once_the_day_has_closed():
    up, down = daily_and_hourly(110.0), daily_and_hourly(90.0)
    # day 1 (2024-01-02) closes at 2024-01-03 00:00: rewriting its close changes nothing before
    known = pd.Timestamp("2024-01-03", tz=UTC)
    pd.testing.assert_series_equal(up[up.index < known], down[down.index < known])
    assert up[pd.Timestamp("2024-01-02 12:00", tz=UTC)] == 10_000.0
    assert up[known] == 10_500.0 and down[known] == 9_500.0  # half the cash in D, +/- 10 %
    assert up.index[0] == pd.Timestamp("2024-01-01 01:00", tz=UTC)  # the first hourly close


def test_a_run_over_mixed_timeframes_combines_values_as_they_become_known(make_cfg):
    cfg = make_cfg("model.device=cpu", "data.synthetic.length=40")
    spec = spec_from_config(cfg)
    trainer = Trainer(spec, cfg.train, torch.device("cpu"), seed=3)
    weights = BacktestWeights(
        spec, trainer.weights_cpu(), "test", "random", 0, cfg.data.extra_timeframes
    )
    jobs = [BacktestJob("synthetic:D@1d"), BacktestJob("synthetic:H@1h")]
    run = run_in_process(jobs, weights, cfg)
    assert all(o.ok for o in run.outcomes), [o.error for o in run.outcomes]
    eq = run.portfolio.equity
    # by hand: each symbol's last value whose bar had closed by t (its cash before)
    parts = []
    for o, bar in zip(run.outcomes, ("1D", "1h"), strict=True):
        e = o.backtest.result.equity
        closes = (e.index + pd.Timedelta(bar)).as_unit("ns").asi8
        pos = np.searchsorted(closes, eq.index.as_unit("ns").asi8, side="right") - 1
        norm = np.where(pos >= 0, e.to_numpy()[np.maximum(pos, 0)] / o.backtest.result.spec.cash, 1)
        parts.append(norm)
    np.testing.assert_allclose(eq.to_numpy(), cfg.backtest.cash * np.mean(parts, axis=0))
    assert eq.index[-1] == pd.Timestamp("2024-02-10", tz=UTC)  # the 40th daily bar's close


def test_combining_without_timeframes_is_refused_not_a_silent_look_ahead():
    """Equity curves are stamped at bar opens; without their timeframes a combine could only
    guess, and the old default (no shift) showed a day's result at its open."""
    days = pd.date_range("2024-01-01", periods=3, freq="1D", tz=UTC)
    daily = simulate(candles(days, [100.0, 110.0, 110.0]), [1, 0, 0], fill="close")
    with pytest.raises(TypeError):
        combine({"D": daily.equity}, {"D": 10_000.0}, 10_000.0)  # type: ignore[call-arg]
    with pytest.raises(BacktestError, match="no timeframe for equity curve"):
        combine({"D": daily.equity}, {"D": 10_000.0}, 10_000.0, timeframes={})
