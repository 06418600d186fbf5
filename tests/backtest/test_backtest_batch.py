"""``simulate_many`` gives each symbol exactly what ``simulate`` gives it alone."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.backtest import simulate
from pipelines.backtest.batch import simulate_many
from pipelines.errors import BacktestError, CandleValidationError


def seeded(n: int, seed: int, start: str = "2024-01-01", freq: str = "1h") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.002, n))
    wick = np.abs(rng.normal(0, 0.003, n))
    idx = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="time")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wick),
            "low": np.minimum(open_, close) * (1 - wick),
            "close": close,
            "volume": 1.0,
        },
        index=idx,
    )


def seeded_signals(n: int, seed: int, density: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return rng.choice(
        np.array([1, -1, 0], dtype=np.int8), n, p=[density / 2, density / 2, 1 - density]
    )


def assert_same(a, b) -> None:
    assert a.symbol == b.symbol
    pd.testing.assert_frame_equal(a.trades, b.trades, check_exact=True)
    pd.testing.assert_frame_equal(a.open_trades, b.open_trades, check_exact=True)
    pd.testing.assert_series_equal(a.equity, b.equity, check_exact=True)
    pd.testing.assert_series_equal(a.position, b.position, check_exact=True)
    assert list(a.stats) == list(b.stats)
    for k, v in a.stats.items():
        w = b.stats[k]
        same = (isinstance(v, float) and math.isnan(v) and math.isnan(w)) or v == w
        assert same, f"{a.symbol} {k}: {v!r} alone, {w!r} in simulate_many"


# 8 symbols of different lengths and ranges (two share one index); small cash on some, so
# whole units get skipped and retried, and a short that runs out of money
SPECS = [
    {},
    {"direction": "long_short", "commission": 0.001},
    {"units": "fractional", "fill": "close", "at_end": "close", "commission": 0.0005},
    {"direction": "long_short", "at_end": "close", "cash": 150.0},
    {"direction": "long_short", "units": "fractional", "bars_per_year": 365.0},
]


@pytest.mark.parametrize("options", SPECS)
def test_every_symbol_is_what_simulate_gives_it_alone(options):
    lengths = [400, 400, 257, 1000, 3, 2, 650, 400]
    frames = [
        seeded(
            n,
            seed,
            start="2024-01-01" if seed != 6 else "2024-03-05",
            freq="1h" if seed != 3 else "1D",
        )
        for seed, n in enumerate(lengths)
    ]
    frames[1] = frames[1].set_axis(frames[0].index)  # a shared index
    sigs: list[object] = [seeded_signals(len(f), seed) for seed, f in enumerate(frames)]
    sigs[2] = pd.Series(np.where(np.asarray(sigs[2]) > 0, "BUY", "HOLD"), index=frames[2].index)
    names = [f"S{i}" for i in range(len(frames))]
    many = simulate_many(frames, sigs, symbols=names, **options)
    for f, s, name, got in zip(frames, sigs, names, many, strict=True):
        assert_same(simulate(f, s, symbol=name, **options), got)


def test_skipped_entries_and_a_wiped_out_short_match_simulate():
    # 120 of cash buys one unit at ~100 and none after a loss: entries are skipped and retried
    frames = [seeded(300, seed) for seed in range(6)]
    sigs = [seeded_signals(300, seed, density=0.5) for seed in range(6)]
    up = frames[5].copy()  # a short into a 20x rally runs out of money
    ramp = np.linspace(1, 20, 300)
    up[["open", "high", "low", "close"]] = up[["open", "high", "low", "close"]].mul(ramp, axis=0)
    frames[5] = up
    sigs[5] = np.r_[-1, np.zeros(299, dtype=np.int8)]
    many = simulate_many(frames, sigs, cash=120.0, direction="long_short", commission=0.001)
    alone = [
        simulate(f, s, cash=120.0, direction="long_short", commission=0.001, symbol=str(i))
        for i, (f, s) in enumerate(zip(frames, sigs, strict=True))
    ]
    assert sum(r.stats["skipped_entries"] for r in alone) > 0  # the case is exercised
    assert alone[5].equity.iloc[-1] == 0.0
    for a, b in zip(alone, many, strict=True):
        assert_same(a, b)


def test_bad_input_is_refused_naming_the_symbol_before_anything_runs():
    good = seeded(50, 0)
    bad = good.copy()
    bad.iloc[7, bad.columns.get_loc("high")] = bad["low"].iloc[7] * 0.5
    with pytest.raises(CandleValidationError, match=r"B: row 7 .*high-covers-open-close"):
        simulate_many([good, bad], [np.zeros(50), np.zeros(50)], symbols=["A", "B"])
    with pytest.raises(BacktestError, match="B: got 49 signals for 50 candles"):
        simulate_many([good, good], [np.zeros(50), np.zeros(49)], symbols=["A", "B"])
    with pytest.raises(BacktestError, match="one of each per symbol"):
        simulate_many([good, good], [np.zeros(50)])


@pytest.mark.parametrize(
    ("row", "column", "value", "rule"),
    [
        (3, "close", np.nan, "finite"),
        (4, "high", np.inf, "finite"),
        (5, "open", -np.inf, "finite"),
        (6, "volume", np.inf, "finite"),
        (8, "low", 0.0, "positive-price"),
        (9, "volume", -1.0, "volume-non-negative"),
        (10, "low", 1e9, "low-covers-open-close"),
    ],
)
def test_the_fast_candle_check_refuses_what_the_schema_refuses(row, column, value, rule):
    df = seeded(30, 1)
    df.iloc[row, df.columns.get_loc(column)] = value
    with pytest.raises(CandleValidationError) as err:
        simulate(df, np.zeros(30))
    assert err.value.rule == rule and err.value.row == row
    unsorted = seeded(30, 1).iloc[[0, 1, 3, 2, *range(4, 30)]]
    with pytest.raises(CandleValidationError, match="sorted-timestamps"):
        simulate(unsorted, np.zeros(30))
