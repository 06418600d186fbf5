import numpy as np
import pandas as pd

from conf.schema import SyntheticConfig
from pipelines.data.features import (
    candle_targets,
    denormalise,
    higher_timeframes,
    make_windows,
    n_features,
)
from pipelines.data.sources.synthetic import generate


def candles(n=300):
    return generate("F", "1h", SyntheticConfig(length=n))


def test_window_shapes_and_normalisation():
    df = candles()
    hi = higher_timeframes(df, "1h", ("4h",))
    x, sigma = make_windows(df, 16, hi)
    assert x.shape == (300 - 15, 16, n_features(1)) and x.dtype == np.float32
    assert np.isfinite(x).all() and (sigma > 0).all()
    assert np.allclose(x[:, -1, 3], 0.0)  # prices are relative to the window's last close


def test_no_look_ahead_in_windows():
    df = candles()
    ends = np.arange(15, 200)
    x1, s1 = make_windows(df, 16, higher_timeframes(df, "1h", ("4h",)), ends)
    future = df.copy()
    future.iloc[200:, :4] *= 3.0  # rewrite everything after bar 199
    future.iloc[200:, 4] *= 10
    x2, s2 = make_windows(future, 16, higher_timeframes(future, "1h", ("4h",)), ends)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(s1, s2)


def test_targets_denormalise_to_the_next_candle():
    df = candles()
    ends = np.arange(15, 299)
    x, sigma = make_windows(df, 16, [], ends)
    y = candle_targets(df, 16, ends, sigma)
    prices = denormalise(y, df["close"].to_numpy()[ends], sigma)
    expect = df[["open", "high", "low", "close"]].to_numpy()[ends + 1]
    np.testing.assert_allclose(prices, expect, rtol=1e-5)


def test_extra_timeframe_not_coarser_uses_base_candles():
    idx = pd.date_range("2020-01-01", periods=50, freq="1D", tz="UTC", name="time")
    df = candles(50).set_axis(idx)
    (h,) = higher_timeframes(df, "1d", ("4h",))
    np.testing.assert_allclose(h[:, 3], np.log(df["close"].to_numpy()))


def test_higher_timeframe_features_do_not_depend_on_where_the_data_starts():
    # training sees the series from its start, a backtest from later: the same bar must see
    # the same 3-day / 2-week candle once the backtest's first (partial) bin has closed
    idx = pd.date_range("2024-01-01", periods=120, freq="1D", tz="UTC", name="time")
    df = candles(120).set_axis(idx)
    for tf, skip in (("3d", 1), ("3d", 2), ("2w", 3), ("2w", 9)):
        (whole,) = higher_timeframes(df, "1d", (tf,))
        (late,) = higher_timeframes(df.iloc[skip:], "1d", (tf,))
        settled = skip + 2 * int(tf[0]) * (7 if tf.endswith("w") else 1)  # past one full bin
        np.testing.assert_array_equal(late[settled - skip :], whole[settled:], err_msg=tf)
