"""CcxtPollFeed against the local fake Binance, whose clock the tests move by hand."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pandas as pd
import pytest
from fake_exchange import FakeBinance, _half_formed, binance_client

from conf.schema import CcxtConfig
from pipelines.data.feeds import CcxtPollFeed, candles_frame
from pipelines.errors import ConfigError, DataSourceError

START = pd.Timestamp("2024-01-01", tz="UTC")
H = pd.Timedelta(hours=1)
HMS = 3_600_000
CFG = CcxtConfig(limit=100, max_retries=2, backoff_s=0.0, backoff_max_s=0.0, timeout_ms=500)


@pytest.fixture(scope="module")
def server():
    with FakeBinance(start=START, bars=10, interval="1h") as srv:
        yield srv


@pytest.fixture
def fake(server: FakeBinance) -> FakeBinance:
    server.reset()
    server.page_cap = 1000
    server.now_ms = None
    server.partial_open_bar = False
    return server


def at(fake: FakeBinance, bar: int, minutes: int = 30) -> None:
    """Set the exchange's clock ``minutes`` into bar ``bar`` (so bar ``bar`` is open)."""
    fake.now_ms = fake.open_ms(bar) + minutes * 60_000


def make_feed(fake: FakeBinance, fetch_time: bool = True, **kw) -> CcxtPollFeed:
    sleeps: list[float] = []
    kw.setdefault("sleep", sleeps.append)
    ex = binance_client(fake, fetch_time=fetch_time)
    return CcxtPollFeed("binance", "BTC/USDT", "1h", CFG, exchange=ex, **kw)


def bars(candles) -> list[int]:
    return [int((c.timestamp - START) / H) for c in candles]


def test_emits_a_candle_only_once_the_exchange_closed_it(fake):
    feed = make_feed(fake)
    at(fake, 10)  # bar 10 is open (and in the answer); bar 9 is the newest closed
    first = feed.poll()
    assert bars(first) == [9]
    assert fake.calls("klines")[-1].fault == "ok" and "startTime" not in fake.calls()[-1].params
    pd.testing.assert_frame_equal(
        candles_frame(first), fake.expected("BTCUSDT", 9, 9), check_freq=False
    )
    fake.now_ms = fake.open_ms(11) - 1  # one ms before bar 10 closes: still nothing new
    assert feed.poll() == []
    fake.now_ms = fake.open_ms(11)  # bar 10 closes exactly now
    assert bars(feed.poll()) == [10]
    assert feed.poll() == [] and feed.stats.emitted == 2
    assert feed.exchange_now == pd.Timestamp(fake.now_ms, unit="ms", tz="UTC")


def test_without_server_time_the_newest_candle_tells_the_time(fake):
    feed = make_feed(fake, server_time=False)
    at(fake, 10)
    assert bars(feed.poll()) == [9]  # bar 10 is the newest in the answer: still open
    assert fake.calls("time") == []


def test_after_a_known_candle_every_later_closed_one_comes_once_with_backfill(fake):
    at(fake, 20)
    feed = make_feed(fake, after=START + 3 * H)
    got = feed.poll()
    assert bars(got) == list(range(4, 20))  # the poll answer held 16..20; 4..15 backfilled
    pd.testing.assert_frame_equal(
        candles_frame(got), fake.expected("BTCUSDT", 4, 19), check_freq=False
    )
    since = [int(r.params["startTime"]) for r in fake.calls("klines") if "startTime" in r.params]
    assert since == [fake.open_ms(4)]
    assert feed.stats.backfilled == 12 and feed.stats.gaps == 0


def test_repeated_out_of_order_late_and_holey_answers_give_each_candle_once(fake):
    at(fake, 10)
    feed = make_feed(fake)
    out = feed.poll()  # bar 9
    rng = random.Random(3)
    edits = [
        lambda rows: rows[::-1],  # reversed
        lambda rows: rows + rows[:3],  # repeated rows within one answer
        lambda rows: rows[:-3],  # late: the newest bars are missing
        lambda rows: rng.sample(rows, len(rows)),  # shuffled
        lambda rows: [r for r in rows if r[0] != fake.open_ms(13)],  # a hole in the middle
        lambda rows: rows[:1],  # very late: only an old bar
    ]
    for bar, edit in zip(range(11, 17), edits, strict=True):
        fake.edit_next(edit)
        at(fake, bar)
        out += feed.poll()
    at(fake, 18)
    out += feed.poll()
    assert bars(out) == list(range(9, 18))
    assert feed.stats.gaps == 0 and feed.stats.skipped == {} and feed.stats.repeated > 0


def test_a_bar_the_exchange_never_has_is_reported_as_a_gap(fake, caplog):
    at(fake, 5)
    feed = make_feed(fake)
    feed.poll()  # bar 4

    def hole(rows):
        return [r for r in rows if r[0] != fake.open_ms(6)]

    fake.edit_next(hole, hole)  # the poll's answer and the backfill's
    at(fake, 9)
    with caplog.at_level("WARNING"):
        assert bars(feed.poll()) == [5, 7, 8]
    assert (feed.stats.gaps, feed.stats.missing_bars, feed.stats.backfilled) == (1, 1, 0)
    assert "gap of 1 bar(s)" in caplog.text
    at(fake, 10)
    assert bars(feed.poll()) == [9]  # the gap is not asked for again


def test_network_errors_are_retried(fake):
    at(fake, 10)
    feed = make_feed(fake)
    fake.plan(["503"], route="time")
    fake.plan(["500", "reset"], route="klines")
    assert bars(feed.poll()) == [9]
    assert [r.fault for r in fake.calls("klines")] == ["500", "reset", "ok"]


def test_retries_running_out_raise_and_the_next_round_loses_nothing(fake):
    at(fake, 10)
    feed = make_feed(fake)
    feed.poll()
    at(fake, 12)
    fake.plan(["502"] * (CFG.max_retries + 1))
    with pytest.raises(DataSourceError, match="failed 3 time"):
        feed.poll()
    assert bars(feed.poll()) == [10, 11]


def test_a_bad_candle_is_reported_skipped_and_not_taken_for_a_gap(fake, caplog):
    at(fake, 5)
    feed = make_feed(fake)
    feed.poll()  # bar 4

    def break_bars(rows):
        for r in rows:
            if r[0] == fake.open_ms(6):
                r[2] = str(float(r[3]) * 0.99)  # high below low, open and close
            if r[0] == fake.open_ms(7):
                r[4] = "0"  # a zero close
        return rows

    fake.edit_next(break_bars)
    at(fake, 9)
    with caplog.at_level("WARNING"):
        assert bars(feed.poll()) == [5, 8]
    assert feed.stats.skipped == {"high-covers-open-close": 1, "positive-price": 1}
    assert feed.stats.gaps == 0
    assert "rule 'high-covers-open-close'" in caplog.text
    at(fake, 10)
    assert bars(feed.poll()) == [9]  # the good answer for bars 6, 7 comes too late: no repeat


def test_candles_polls_and_sleeps_between_rounds(fake):
    at(fake, 10)
    waits: list[float] = []

    def sleep(s: float) -> None:  # the injected clock: each wait lets the exchange move half a bar
        waits.append(s)
        fake.now_ms += HMS // 2

    feed = make_feed(fake, sleep=sleep, poll_interval_s=7.0)
    got = list(itertools.islice(feed.candles(), 4))
    assert bars(got) == [9, 10, 11, 12]
    assert waits == [7.0] * 5 and feed.stats.polls == 6  # rounds at :30, :00, :30, :00, :30, :00


def real(fake: FakeBinance, candles) -> pd.DataFrame:
    """The exchange's real (closed) bars at the times of ``candles``."""
    got = bars(candles)
    return pd.concat([fake.expected("BTCUSDT", b, b) for b in got]) if got else candles_frame([])


def test_a_stale_answer_s_half_formed_bar_is_not_emitted_and_the_real_one_comes_later(fake):
    at(fake, 10)
    feed = make_feed(fake)
    assert bars(feed.poll()) == [9]
    # the exchange's clock is 2 s past bar 10's close, but its klines answer was computed
    # just before it (a cache or replica lag): bar 11 is not in it, bar 10 is half-formed
    fake.now_ms = fake.open_ms(11) + 2_000

    def stale(rows):
        rows = [r for r in rows if r[0] <= fake.open_ms(10)]
        return [*rows[:-1], _half_formed(rows[-1])]

    fake.edit_next(stale)
    assert feed.poll() == []
    fake.now_ms = fake.open_ms(12) + 60_000
    later = feed.poll()
    assert bars(later) == [10, 11]
    pd.testing.assert_frame_equal(candles_frame(later), real(fake, later), check_freq=False)


def test_a_row_from_the_future_is_skipped_and_never_closes_the_open_bar(fake, caplog):
    fake.partial_open_bar = True  # the open bar is served half-formed, as a real exchange does
    at(fake, 10)
    feed = make_feed(fake)
    out = feed.poll()  # bar 9

    def garbled(rows):  # one row stamped ten years ahead (a time in the wrong unit)
        bad = list(rows[-1])
        bad[0] = fake.open_ms(10 * 8766)
        return [*rows, bad]

    fake.edit_next(garbled)
    with caplog.at_level("WARNING"):
        assert feed.poll() == []  # bar 10 is still open: the future row does not close it
    assert feed.stats.skipped == {"future-timestamp": 1}
    assert "rule 'future-timestamp'" in caplog.text and "2033-12-31" in caplog.text
    assert feed.exchange_now == pd.Timestamp(fake.now_ms, unit="ms", tz="UTC")
    for bar in range(11, 14):  # 10 minutes into each next bar: only the one before it closed
        at(fake, bar, minutes=10)
        got = feed.poll()
        assert bars(got) == [bar - 1]
        out += got
    pd.testing.assert_frame_equal(candles_frame(out), real(fake, out), check_freq=False)
    assert feed.stats.skipped == {"future-timestamp": 1}


def test_an_exchange_without_fetch_time_is_polled_by_the_newest_row_rule(fake):
    at(fake, 10)
    feed = make_feed(fake, fetch_time=False)  # as bitstamp, gemini, ...: no fetchTime
    assert feed.server_time is False
    assert bars(feed.poll()) == [9]
    at(fake, 11, minutes=0)
    assert bars(feed.poll()) == [10]
    assert fake.calls("time") == []


def test_without_fetch_time_a_row_past_the_local_clock_is_skipped(fake):
    at(fake, 10)
    local = fake.now_ms / 1000  # the laptop's clock, here the exchange's
    feed = make_feed(fake, fetch_time=False, wall_clock=lambda: local)
    feed.poll()  # bar 9

    def ahead(rows):  # a row an hour past the local clock + data.ccxt.clock_slack_s (300 s)
        bad = list(rows[-1])
        bad[0] = fake.open_ms(12)
        return [*rows, bad]

    fake.edit_next(ahead)
    assert feed.poll() == [] and feed.stats.skipped == {"future-timestamp": 1}


def test_history_is_the_closed_bars_before_the_newest_and_polling_goes_on_after_it(fake, tmp_path):
    at(fake, 20)
    feed = make_feed(fake, cache_dir=str(tmp_path))
    warm = feed.history(6)
    pd.testing.assert_frame_equal(warm, fake.expected("BTCUSDT", 14, 19), check_freq=False)
    at(fake, 22)
    assert bars(feed.poll()) == [20, 21]  # nothing repeated, nothing skipped


def test_history_leaves_out_a_stale_answer_s_half_formed_bar_and_needs_no_fetch_time(
    fake, tmp_path
):
    fake.now_ms = fake.open_ms(21) + 2_000  # bar 20 closed 2 s ago; the answer does not show it

    def stale(rows):
        rows = [r for r in rows if r[0] <= fake.open_ms(20)]
        return [*rows[:-1], _half_formed(rows[-1])]

    fake.edit_next(stale)
    feed = make_feed(fake, fetch_time=False, cache_dir=str(tmp_path))
    warm = feed.history(5)
    pd.testing.assert_frame_equal(warm, fake.expected("BTCUSDT", 15, 19), check_freq=False)
    at(fake, 22)
    got = feed.poll()
    assert bars(got) == [20, 21]
    pd.testing.assert_frame_equal(candles_frame(got), real(fake, got), check_freq=False)
    assert fake.calls("time") == []


def test_a_negative_clock_slack_is_refused_naming_the_key(fake):
    with pytest.raises(ConfigError, match=r"data\.ccxt\.clock_slack_s=-1\.0 .* seconds >= 0"):
        CcxtPollFeed(
            "binance",
            "BTC/USDT",
            "1h",
            replace(CFG, clock_slack_s=-1.0),
            exchange=binance_client(fake),
        )
