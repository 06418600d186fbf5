"""A session host's exchange feed polls outside the host's lock: a slow exchange delays only
its own session, never the predictions of the other sessions on the host."""

from __future__ import annotations

import json
import time

import pandas as pd
from fake_exchange import FakeBinance, binance_options
from host_support import call, hosts_for, kill, wait_until

from actors.host_feeds import PollSource

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

        # the next poll round: the exchange's clock answers slowly, then its candles do
        fake.plan(["timeout"], route="time")
        fake.plan(["timeout"], route="klines")
        call(host.reset_latencies.remote())
        wait_until(
            lambda: any(r.fault == "timeout" for r in fake.calls("time")),
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
            lambda: any(r.fault == "timeout" for r in fake.calls("klines")),
            timeout_s=15,
            every_s=0.02,
            what="the slow klines request",
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
