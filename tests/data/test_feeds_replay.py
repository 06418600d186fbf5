"""ReplayFeed: a stored series as closed candles, deterministic, on a fake clock."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conf.schema import DataConfig, SyntheticConfig
from pipelines.data.feeds import Candle, ReplayFeed, candles_frame
from pipelines.data.feeds.base import CandleGate, FeedStats
from pipelines.data.sources import SymbolSpec, load_candles
from pipelines.errors import InvalidInputError

SPEC = SymbolSpec("synthetic", "SYN0", "1h")
DATA = DataConfig(synthetic=SyntheticConfig(length=300))


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    return load_candles(SPEC, DATA)


def test_replay_yields_every_stored_candle_once_in_order_and_is_deterministic(series):
    first = list(ReplayFeed.from_spec(SPEC, DATA).candles())
    again = list(ReplayFeed(series, SPEC).candles())
    assert first == again
    assert all(isinstance(c, Candle) for c in first)
    pd.testing.assert_frame_equal(candles_frame(first), series, check_freq=False)


def test_speed_paces_candles_on_the_clock(series):
    clock = FakeClock()
    feed = ReplayFeed(series.iloc[:11], SPEC, speed=20, clock=clock, sleep=clock.sleep)
    times = []
    for _ in feed.candles():
        times.append(clock.t)
    # 20 candles per second: candle k is due k/20 s after the first
    np.testing.assert_allclose(np.diff(times), 0.05)
    assert times[-1] - times[0] == pytest.approx(0.5)
    assert feed.stats.emitted == 11


def test_a_slow_consumer_gets_late_candles_at_once_without_shifting_the_schedule(series):
    clock = FakeClock()
    feed = ReplayFeed(series.iloc[:5], SPEC, speed=10, clock=clock, sleep=clock.sleep)
    times = []
    for i, _ in enumerate(feed.candles()):
        times.append(round(clock.t - 1000.0, 6))
        if i == 1:
            clock.t += 0.25  # the consumer took 2.5 candle periods over candle 1
    assert times == [0.0, 0.1, 0.35, 0.35, 0.4]


def test_speed_zero_never_sleeps(series):
    clock = FakeClock()
    out = list(ReplayFeed(series, SPEC, speed=0, clock=clock, sleep=clock.sleep).candles())
    assert len(out) == len(series) and clock.sleeps == []


@pytest.mark.parametrize("speed", [-1, float("nan"), float("inf")])
def test_bad_speed_is_refused(series, speed):
    with pytest.raises(InvalidInputError, match="speed"):
        ReplayFeed(series, SPEC, speed=speed)


@pytest.mark.parametrize(
    "start, first_row",
    [(200, 200), (-50, 250), ("2024-01-05T00:00Z", 96), (pd.Timestamp("2024-01-05 00:30"), 97)],
)
def test_start_splits_history_from_the_played_bars(series, start, first_row):
    feed = ReplayFeed(series, SPEC, start=start)
    played = list(feed.candles())
    pd.testing.assert_frame_equal(feed.history(), series.iloc[:first_row], check_freq=False)
    pd.testing.assert_frame_equal(candles_frame(played), series.iloc[first_row:], check_freq=False)
    assert len(feed) == len(played) and feed.stats.gaps == 0


def test_start_outside_the_series_is_refused(series):
    with pytest.raises(InvalidInputError, match="outside the 300 stored bars"):
        ReplayFeed(series, SPEC, start=301)
    with pytest.raises(InvalidInputError, match="neither a row number nor a time"):
        ReplayFeed(series, SPEC, start="yesterday-ish")
    with pytest.raises(InvalidInputError, match="outside the 300 stored bars"):
        ReplayFeed(series, SPEC, start="-301")  # numeric text is a row, never the year -301
    after = (series.index[-1] + pd.Timedelta(hours=1)).isoformat()
    with pytest.raises(InvalidInputError, match=r"is after the data .* spans 2024-01-01"):
        ReplayFeed(series, SPEC, start=after)


def test_numeric_text_is_a_row_not_a_year(series):
    # pandas reads "-100" as the year -100, which would replay the whole series with no warm-up
    as_text, as_int = ReplayFeed(series, SPEC, start="-100"), ReplayFeed(series, SPEC, start=-100)
    assert len(as_text.history()) == len(as_int.history()) == 200
    assert [c.time for c in as_text.candles()] == [c.time for c in as_int.candles()]
    for odd in ("-+5", "\u00b2", "1e3"):  # not a plain row: refused as neither row nor time
        with pytest.raises(InvalidInputError, match="neither a row number nor a time"):
            ReplayFeed(series, SPEC, start=odd)


def test_bad_rows_are_skipped_and_counted_by_rule_and_gaps_reported(series, caplog):
    df = series.iloc[:12].copy()
    df.iloc[2, 0] = np.nan  # finite
    df.iloc[3, 1] = -1.0  # positive-price (high)
    df.iloc[4, 1] = df.iloc[4, 2] * 0.999  # high below low/open/close
    rows = [df.iloc[[i]] for i in range(len(df))]
    dup = rows[6].copy()
    earlier = rows[1].copy()
    bad = pd.concat([*rows[:7], dup, earlier, *rows[7:9], *rows[10:]])  # bar 9 missing
    feed = ReplayFeed(bad, SPEC)
    with caplog.at_level("WARNING"):
        got = list(feed.candles())
    kept = [0, 1, 5, 6, 7, 8, 10, 11]
    pd.testing.assert_frame_equal(candles_frame(got), series.iloc[kept], check_freq=False)
    assert feed.stats.skipped == {
        "finite": 1,
        "positive-price": 1,
        "high-covers-open-close": 1,
        "unique-timestamps": 1,
        "sorted-timestamps": 1,
    }
    assert (feed.stats.gaps, feed.stats.missing_bars) == (1, 1)  # bar 9; bad bars 2-4 are not a gap
    assert "rule 'finite'" in caplog.text and "gap of 1 bar(s)" in caplog.text


def test_the_gate_takes_an_exchanges_null_as_nan_and_skips_it():
    """Every feed's gate: a null value (as some exchanges send for volume) is the validator's
    'finite' rule, skipped and counted; the next good bar is no gap and comes out whole."""
    stats = FeedStats()
    gate = CandleGate("X", "1h", stats)
    t = pd.Timestamp("2024-01-01", tz="UTC")
    assert gate.admit(t, [1.0, 2.0, 0.5, 1.5, None]) is None
    assert stats.skipped == {"finite": 1} and stats.emitted == 0
    c = gate.admit(t + pd.Timedelta(hours=1), [1.0, 2.0, 0.5, 1.5, 3.0])
    assert c is not None and c.timestamp == t + pd.Timedelta(hours=1)
    assert c.time == (t + pd.Timedelta(hours=1)).value and c.values() == (1.0, 2.0, 0.5, 1.5, 3.0)
    assert (stats.emitted, stats.gaps) == (1, 0)
