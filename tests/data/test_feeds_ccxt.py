"""CcxtPollFeed against the local fake Binance, whose clock the tests move by hand."""

from __future__ import annotations

import itertools
import random

import pandas as pd
import pytest
from fake_exchange import FakeBinance, binance_client

from conf.schema import CcxtConfig
from pipelines.data.feeds import CcxtPollFeed, candles_frame
from pipelines.errors import DataSourceError

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
    return server


def at(fake: FakeBinance, bar: int, minutes: int = 30) -> None:
    """Set the exchange's clock ``minutes`` into bar ``bar`` (so bar ``bar`` is open)."""
    fake.now_ms = fake.open_ms(bar) + minutes * 60_000


def make_feed(fake: FakeBinance, **kw) -> CcxtPollFeed:
    sleeps: list[float] = []
    kw.setdefault("sleep", sleeps.append)
    return CcxtPollFeed("binance", "BTC/USDT", "1h", CFG, exchange=binance_client(fake), **kw)


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
