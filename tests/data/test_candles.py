import numpy as np
import pandas as pd
import pytest

from pipelines.data.candles import (
    align_higher_timeframe,
    find_gaps,
    infer_timeframe,
    normalize_columns,
    resample,
    timeframe_seconds,
    validate_candles,
)
from pipelines.errors import CandleValidationError


def frame(n: int = 6, start: str = "2024-01-01", freq: str = "1h") -> pd.DataFrame:
    idx = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="time")
    close = 100 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "open": close - 0.5,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": np.full(n, 10.0),
        },
        index=idx,
    )


def test_valid_frame_passes():
    df = frame()
    assert validate_candles(df, "X") is df


def _set(df, row, col, val):
    df = df.copy()
    df.iloc[row, df.columns.get_loc(col)] = val
    return df


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda d: _set(d, 3, "close", np.nan), "finite"),
        (lambda d: _set(d, 3, "volume", np.inf), "finite"),
        (lambda d: _set(_set(d, 3, "low", -1.0), 3, "open", 0.0), "positive-price"),
        (lambda d: _set(d, 3, "high", 50.0), "high-covers-open-close"),
        (lambda d: _set(d, 3, "low", 200.0), "low-covers-open-close"),
        (lambda d: _set(d, 3, "volume", -5.0), "volume-non-negative"),
    ],
)
def test_each_rule_names_symbol_row_and_rule(mutate, rule):
    with pytest.raises(CandleValidationError) as exc:
        validate_candles(mutate(frame()), "binance:BTC/USDT")
    e = exc.value
    assert e.rule == rule and e.row == 3 and e.symbol == "binance:BTC/USDT"
    assert "row 3" in str(e) and rule in str(e) and "binance:BTC/USDT" in str(e)


def test_duplicate_and_unsorted_timestamps():
    df = frame()
    dup = df.iloc[[0, 1, 2, 2, 3]]
    with pytest.raises(CandleValidationError, match="row 3.*unique-timestamps"):
        validate_candles(dup, "X")
    uns = df.iloc[[0, 2, 1, 3]]
    with pytest.raises(CandleValidationError, match="row 2.*sorted-timestamps"):
        validate_candles(uns, "X")


def test_wrong_columns_index_and_dtype():
    with pytest.raises(CandleValidationError, match="columns"):
        validate_candles(frame().drop(columns="volume"), "X")
    with pytest.raises(CandleValidationError, match="UTC"):
        validate_candles(frame().tz_localize(None), "X")
    with pytest.raises(CandleValidationError, match="dtype"):
        validate_candles(frame().astype({"volume": "int64"}), "X")
    with pytest.raises(CandleValidationError, match="missing column"):
        normalize_columns(frame().drop(columns="high"))


def test_gaps_are_reported_not_filled():
    df = frame(10).drop(index=frame(10).index[[3, 4, 7]])
    gaps = find_gaps(df, "1h")
    assert [(g.missing_bars) for g in gaps] == [2, 1]
    assert len(df) == 7  # untouched
    assert infer_timeframe(df) == "1h"


def test_resample_aggregates_ohlcv():
    df = frame(8)
    r = resample(df, "4h")
    assert len(r) == 2
    first = r.iloc[0]
    assert first["open"] == df["open"].iloc[0] and first["close"] == df["close"].iloc[3]
    assert first["high"] == df["high"].iloc[:4].max() and first["volume"] == 40.0


def test_higher_timeframe_visible_only_after_close():
    base = frame(12)  # 00:00 .. 11:00
    higher = resample(base, "4h")  # opens 00:00, 04:00, 08:00
    al = align_higher_timeframe(base, "1h", higher, "4h")
    # the 00:00-04:00 candle closes at 04:00 = close of the 03:00 base bar
    assert al.iloc[:3].isna().all().all()
    assert al["close"].iloc[3] == base["close"].iloc[3]
    assert al["close"].iloc[6] == base["close"].iloc[3]  # 04:00 candle not closed yet at 07:00 open
    assert al["close"].iloc[7] == base["close"].iloc[7]
    # no look-ahead: changing the future never changes what a bar saw
    fut = base.copy()
    fut.iloc[8:, :] *= 1.5
    al2 = align_higher_timeframe(fut, "1h", resample(fut, "4h"), "4h")
    pd.testing.assert_frame_equal(al.iloc[:8], al2.iloc[:8])


@pytest.mark.parametrize(
    ("base", "tf"), [("1h", "4h"), ("1d", "2d"), ("1d", "3d"), ("1h", "1w"), ("1d", "2w")]
)
def test_resample_bins_do_not_depend_on_where_the_data_starts(base, tf):
    df = frame(24 * 40 if base == "1h" else 120, start="2024-01-01", freq=base)
    whole = resample(df, tf)
    width = pd.Timedelta(tf.replace("w", "W").replace("d", "D"))
    per_day = 24 if base == "1h" else 1
    for skip in (1, 2, 5, 8 * per_day + 1, 30 * per_day):
        late = resample(df.iloc[skip:], tf)
        # every bin after the first (which the later start cuts short) is the same candle
        pd.testing.assert_frame_equal(late.iloc[1:], whole.loc[late.index[1:]])
        assert late.index[0] <= df.index[skip] < late.index[0] + width


def test_resample_bins_sit_on_the_epoch_grid_and_weeks_start_on_monday():
    df = frame(24 * 40, start="2024-01-02 05:00")  # a Tuesday, mid-morning
    epoch, monday = pd.Timestamp(0, tz="UTC"), pd.Timestamp("1970-01-05", tz="UTC")
    for tf, days, origin in (
        ("2d", 2, epoch),
        ("3d", 3, epoch),
        ("1w", 7, monday),
        ("2w", 14, monday),
    ):
        starts = resample(df, tf).index
        assert ((starts - origin).days % days == 0).all(), tf
        assert ((starts - origin) % pd.Timedelta(days=1) == pd.Timedelta(0)).all(), tf
    assert resample(df, "3d").index[0] == pd.Timestamp("2023-12-31", tz="UTC")
    assert resample(df, "1w").index[0] == pd.Timestamp("2024-01-01", tz="UTC")  # a Monday
    assert (
        resample(df, "2w")
        .index[:2]
        .equals(pd.DatetimeIndex(["2023-12-25", "2024-01-08"], tz="UTC", name="time"))
    )


@pytest.mark.parametrize(
    "spec", ["sample:EURUSD@99999w", "synthetic:SYN0@53w", "binance:X@9999999d"]
)
def test_a_timeframe_past_a_year_is_refused_wherever_it_comes_from(spec):
    # 99999w used to pass the grammar and overflow the nanosecond clock later (a 500 on the API)
    from pipelines.data.sources import parse_symbol
    from pipelines.errors import CandlerayError

    with pytest.raises(CandlerayError, match="longer than the longest bar, 52w"):
        parse_symbol(spec, "1h")
    assert timeframe_seconds("52w") == 52 * 7 * 86400
