"""A session host's exchange feed polls outside the host's lock: a slow exchange delays only
its own session, never the predictions of the other sessions on the host. A finished
session's feed stops; an exchange without fetchTime is polled as well as one with it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fake_exchange import FakeBinance, binance_client, binance_options
from host_support import call, hosts_for, kill, wait_until

from actors.hosts.core import HostCore
from actors.hosts.feeds import PollSource
from actors.hosts.host import host_journal
from pipelines.live import Candle

START = pd.Timestamp("2024-01-01", tz="UTC")


class HeldFeed:
    """A CcxtPollFeed stand-in whose round does not return until the test sets ``release``
    (an exchange that takes as long as the test wants); ``polling`` is set once it is in it."""

    poll_interval_s = 0.05

    def __init__(self) -> None:
        self.polling, self.release = threading.Event(), threading.Event()
        self.spec = type("Spec", (), {"key": "stub:SLOW@1m"})()

    def poll(self) -> list:
        self.polling.set()
        assert self.release.wait(120), "the test never released the poll"
        return []


def test_poll_source_answers_at_once_while_its_exchange_is_slow():
    feed = HeldFeed()
    src = PollSource(feed, time.monotonic)  # type: ignore[arg-type]
    try:
        assert feed.polling.wait(120), "the poller never polled"
        answers: list = []
        # due() and next_due() answer while the round is still held: they never wait for it
        asker = threading.Thread(
            target=lambda: answers.append((src.due(time.monotonic(), 1), src.next_due())),
            daemon=True,
        )
        asker.start()
        asker.join(120)  # a hang guard: a due() that waited for the round would end only here
        assert answers == [([], None)] and not feed.release.is_set()
    finally:
        feed.release.set()
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
    """While the exchange holds its answer to a poll (as long as the test wants: the client
    waits up to data.ccxt.timeout_ms), a replay on the same host goes on predicting and the
    host answers status calls; once the answer comes, the exchange session takes its bar."""
    with FakeBinance(start=START, bars=1, interval="1m") as fake:
        fake.now_ms = fake.open_ms(100) + 30_000
        opts = json.dumps(binance_options(fake))
        cfg = make_cfg(
            "live.hosts=1",
            f"data.ccxt.options={opts}",
            "data.ccxt.backoff_s=0.05",
            "data.ccxt.timeout_ms=600000",  # the held answer is never cut short by the client
        )
        _, (host,) = hosts_for(cfg)
        replay = call(host.start_session.remote("synthetic:SYN0", "1h", "none", "replay", 20, -600))
        ccxt = call(host.start_session.remote("binance:BTC/USDT", "1m", "none", "ccxt"))
        # the exchange session polls (its warm-up asked once) and the replay predicts
        wait_until(lambda: len(fake.calls("time")) >= 2, what="the exchange session's first poll")
        wait_until(lambda: _predictions(host, replay["id"]) >= 20, what="replay predictions")

        # the next poll's candles are held until the test releases them; bar 100 closes
        fake.plan(["hold"], route="klines")
        fake.now_ms = fake.open_ms(101) + 30_000
        wait_until(lambda: fake.holding == 1, timeout_s=120, every_s=0.02, what="a held poll")
        before = _predictions(host, replay["id"])
        wait_until(  # each status call takes the host's lock, as the loop does
            lambda: _predictions(host, replay["id"]) >= before + 40,
            timeout_s=120,
            what="40 replay predictions while the exchange holds its answer",
        )
        # a host polling under its lock would have taken none until the answer came
        assert fake.holding == 1, "the exchange's answer was not held all that time"
        fake.release()
        wait_until(
            lambda: call(host.status.remote(ccxt["id"]))["metrics"]["candles"] >= 1,
            timeout_s=120,
            what="the exchange session to take bar 100 once its answer came",
        )
        call(host.shutdown.remote())
        kill(host)
