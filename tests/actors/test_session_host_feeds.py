"""A session host's exchange feed polls outside the host's lock: a slow exchange delays only
its own session, never the predictions of the other sessions on the host. A finished
session's feed stops; an exchange without fetchTime is polled as well as one with it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fake_exchange import FakeBinance, binance_client, binance_options
from host_support import call, hosts_for, kill, wait_until

from actors.host_core import HostCore
from actors.host_feeds import PollSource
from actors.session_host import host_journal
from pipelines.live import Candle

START = pd.Timestamp("2024-01-01", tz="UTC")

SLOW_S = 2.5  # each slow answer; the ccxt client's timeout (10 s) lets it through


class SlowFeed:
    """A CcxtPollFeed stand-in whose every round takes ``slow_s`` and brings nothing."""

    poll_interval_s = 0.05

    def __init__(self, slow_s: float) -> None:
        self.slow_s, self.polls = slow_s, 0
        self.spec = type("Spec", (), {"key": "stub:SLOW@1m"})()

    def poll(self) -> list:
        self.polls += 1
        time.sleep(self.slow_s)
        return []


def test_poll_source_answers_at_once_while_its_exchange_is_slow():
    src = PollSource(SlowFeed(2.0), time.monotonic)  # type: ignore[arg-type]
    try:
        wait_until(lambda: src.feed.polls >= 1, timeout_s=5, every_s=0.01, what="a poll")
        t0 = time.monotonic()
        assert src.due(t0, 1) == [] and src.next_due() is None
        took = time.monotonic() - t0
        assert took < 0.5, f"due() took {took:.2f}s while a 2 s poll was under way"
    finally:
        src.close()


class CandleFeed:
    """A CcxtPollFeed stand-in whose every round brings one new candle."""

    poll_interval_s = 0.01

    def __init__(self) -> None:
        self.polls = 0
        self.spec = type("Spec", (), {"key": "stub:FAST@1m"})()

    def poll(self) -> list[Candle]:
        self.polls += 1
        return [Candle(self.polls * 60_000_000_000, 1.0, 1.0, 1.0, 1.0, 1.0)]


def test_a_closed_poll_source_drops_what_waits_and_its_thread_ends():
    feed = CandleFeed()
    src = PollSource(feed, time.monotonic)  # type: ignore[arg-type]
    wait_until(lambda: src.next_due() is not None, timeout_s=60, every_s=0.01, what="a candle")
    src.close()
    assert src.due(time.monotonic(), 100) == [] and src.next_due() is None
    wait_until(lambda: not src.polling, timeout_s=60, every_s=0.01, what="the poller to end")
    polls = feed.polls
    assert src.due(time.monotonic(), 100) == [] and feed.polls == polls


@dataclass(frozen=True)
class Rows:
    candle: np.ndarray
    probs: np.ndarray
    version: int


class FlatPredictor:
    """Predicts no change and HOLD for every window: these tests look at the feed only."""

    version = 1

    def predict(self, x, batch_size: int = 256) -> Rows:
        n = len(x)
        probs = np.tile(np.array([[0.8, 0.1, 0.1]], dtype=np.float32), (n, 1))
        return Rows(np.zeros((n, 5), dtype=np.float32), probs, self.version)


class NoTraining:
    def submit(self, *args):
        raise AssertionError("mode none must not train")

    def poll(self, handle):
        raise AssertionError("mode none must not train")


def host_on(cfg, exchange) -> HostCore:
    """A HostCore (no Ray) whose ccxt sessions use ``exchange``."""
    journal = host_journal(cfg, 0)
    return HostCore(
        cfg, 0, FlatPredictor(), NoTraining(), journal, clock=time.monotonic, exchange=exchange
    )


def _bar_ns(fake: FakeBinance, i: int) -> int:
    return fake.open_ms(i) * 1_000_000


def test_a_finished_ccxt_session_stops_polling_and_keeps_no_candles(make_cfg):
    with FakeBinance(start=START, bars=1, interval="1m") as fake:
        fake.now_ms = fake.open_ms(150) + 30_000
        core = host_on(make_cfg("data.ccxt.backoff_s=0"), binance_client(fake, timeout_ms=5000))
        try:
            sid = core.start_session("binance:BTC/USDT", "1m", "none", "ccxt", max_candles=1)["id"]
            src = core.sessions[sid].source
            assert isinstance(src, PollSource)
            fake.now_ms = fake.open_ms(153) + 30_000  # bars 150, 151, 152 closed: one poll
            wait_until(
                lambda: core.step() >= 0 and core.status(sid)["state"] == "finished",
                timeout_s=120,
                every_s=0.05,
                what="the session to take its one candle",
            )
            wait_until(lambda: not src.polling, timeout_s=120, what="the poller to end")
            polled = len(fake.calls("klines"))
            fake.now_ms = fake.open_ms(160)  # the exchange moves on
            for _ in range(3):
                core.step()
            st = core.status(sid)
            assert st["state"] == "finished" and st["metrics"]["candles"] == 1
            assert [c["time"] for c in st["last_candles"]][-1] == _bar_ns(fake, 150)
            assert len(fake.calls("klines")) == polled  # no request after it finished
            assert src.next_due() is None  # the candles it did not take were dropped
        finally:
            core.close()


def test_a_ccxt_session_runs_on_an_exchange_without_fetch_time(make_cfg):
    with FakeBinance(start=START, bars=1, interval="1m") as fake:
        fake.now_ms = fake.open_ms(150) + 30_000
        ex = binance_client(fake, timeout_ms=5000, fetch_time=False)  # as bitstamp, gemini, ...
        core = host_on(make_cfg("data.ccxt.backoff_s=0"), ex)
        try:
            sid = core.start_session("binance:BTC/USDT", "1m", "none", "ccxt")["id"]
            # warmed up on the closed bars: the newest, 150, is still open
            assert core.status(sid)["last_candles"][-1]["time"] == _bar_ns(fake, 149)
            fake.now_ms = fake.open_ms(152) + 30_000
            wait_until(
                lambda: core.step() >= 0 and core.status(sid)["metrics"]["candles"] >= 2,
                timeout_s=120,
                every_s=0.05,
                what="the session to take bars 150 and 151",
            )
            times = [c["time"] for c in core.status(sid)["last_candles"]]
            assert times[-3:] == [_bar_ns(fake, i) for i in (149, 150, 151)]
            assert fake.calls("time") == []
        finally:
            core.close()


def _predictions(host, sid: str) -> int:
    return call(host.status.remote(sid))["metrics"]["predictions"]


def test_a_slow_exchange_does_not_delay_a_replay_on_the_same_host(ray_cluster, make_cfg):
    with FakeBinance(
        start=pd.Timestamp("2024-01-01", tz="UTC"), bars=1, interval="1m", slow_s=SLOW_S
    ) as fake:
        fake.now_ms = fake.open_ms(100) + 30_000
        opts = json.dumps(binance_options(fake))
        cfg = make_cfg("live.hosts=1", f"data.ccxt.options={opts}", "data.ccxt.backoff_s=0.05")
        _, (host,) = hosts_for(cfg)
        replay = call(host.start_session.remote("synthetic:SYN0", "1h", "none", "replay", 20, -600))
        call(host.start_session.remote("binance:BTC/USDT", "1m", "none", "ccxt"))
        # the exchange session polls (its warm-up asked once) and the replay predicts
        wait_until(lambda: len(fake.calls("time")) >= 2, what="the exchange session's first poll")
        wait_until(lambda: _predictions(host, replay["id"]) >= 20, what="replay predictions")

        # the next poll round: the candles answer slowly, then the exchange's clock does
        fake.plan(["timeout"], route="time")
        fake.plan(["timeout"], route="klines")
        call(host.reset_latencies.remote())
        wait_until(
            lambda: any(r.fault == "timeout" for r in fake.calls("klines")),
            timeout_s=15,
            every_s=0.02,
            what="the slow poll to start",
        )
        # inside the slow answer: the replay's count, read every 0.2 s; each read answers at
        # once (it takes the host's lock, as the loop does)
        seen, slowest, t_end = [], 0.0, time.monotonic() + 0.8 * SLOW_S
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            seen.append(_predictions(host, replay["id"]))
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.2)
        during = seen[-1] - seen[0]
        wait_until(
            lambda: any(r.fault == "timeout" for r in fake.calls("time")),
            timeout_s=15,
            every_s=0.02,
            what="the slow time request",
        )
        time.sleep(SLOW_S + 0.3)  # the whole slow round has answered
        lat = call(host.stats.remote())["latency_ms"]
        # at 20 candles/s the replay takes ~40 candles in 2 s; a host polling under its lock
        # would take none and then show the whole slow answer (2.5 s) as latency
        assert during >= 10 and slowest < 1.0, (
            f"during {0.8 * SLOW_S:.1f}s of a slow poll the replay predicted {during} candles "
            f"(expected ~{int(16 * SLOW_S)}; counts read {seen}) and the slowest status call "
            f"took {slowest:.2f}s: the host waited for the exchange"
        )
        assert lat["n"] >= 50 and lat["p99"] < 1000, (
            f"replay latency during a slow poll: p50 {lat['p50']} ms, p99 {lat['p99']} ms over "
            f"{lat['n']} predictions (a slow answer takes {SLOW_S * 1000:.0f} ms)"
        )
        call(host.shutdown.remote())
        kill(host)
