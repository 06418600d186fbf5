"""``candleray live`` as a user runs it: bad arguments refused up front, a replay to the end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from support import tiny_overrides

from pipelines import cli


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    return [*tiny_overrides(tmp_path, "livecli"), "live.hosts=1"]


def run_ccxt_live(fake, tiny: list[str], n: int, clock, stop) -> list[str]:
    """``candleray live --source ccxt --candles n`` on the fake Binance while ``clock`` (a
    thread, ended by ``stop``) moves the exchange's time; returns the config overrides used."""
    import threading

    from fake_exchange import binance_options

    ticker = threading.Thread(target=clock, daemon=True)
    ticker.start()
    opts = json.dumps(binance_options(fake))
    args = ["--symbols", "binance:BTC/USDT", "--timeframe", "1m", "--mode", "none"]
    args += ["--source", "ccxt", "--candles", str(n), "--json"]
    over = [*tiny, f"data.ccxt.options={opts}", "data.ccxt.backoff_s=0.05"]
    try:
        assert cli.main(["live", *args, *over]) == 0
    finally:
        stop.set()
        ticker.join()
    return over


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--symbols", ",", "--candles", "5"], "--symbols is empty"),
        (["--symbols", "synthetic:SYN0", "--speed", "-1"], "--speed"),
        (["--symbols", "synthetic:SYN0", "--candles", "0"], "--candles"),
        (["--symbols", "synthetic:SYN0", "--json"], "--json"),
        (["--symbols", "nosuch:X@7q"], "7q"),
    ],
)
def test_bad_arguments_exit_2_before_anything_starts(tiny, capsys, bad, says):
    import ray

    was_up = ray.is_initialized()
    assert cli.main(["live", *bad, *tiny]) == 2
    assert says in capsys.readouterr().err
    assert ray.is_initialized() == was_up  # nothing was started


def test_bad_mode_or_source_is_an_argparse_error(tiny):
    with pytest.raises(SystemExit) as e:
        cli.main(["live", "--symbols", "synthetic:SYN0", "--mode", "sometimes", *tiny])
    assert e.value.code == 2


def test_replay_for_n_candles_prints_final_metrics_as_json(ray_cluster, tiny, capsys):
    args = ["--symbols", "synthetic:SYN0,synthetic:SYN1", "--timeframe", "1h"]
    args += ["--mode", "every_candle", "--source", "replay", "--speed", "0"]
    assert cli.main(["live", *args, "--candles", "40", "--json", *tiny]) == 0
    final = json.loads(capsys.readouterr().out)
    assert [s["symbol"] for s in final] == ["synthetic:SYN0@1h", "synthetic:SYN1@1h"]
    for s in final:
        m = s["metrics"]
        assert m["candles"] == 40 and m["predictions"] == 40 and s["mode"] == "every_candle"
        assert m["train_requested"] == 40 and s["prediction"]["action"] in ("HOLD", "BUY", "SELL")
        # it returned once the training drained: nothing left for the shutdown to discard
        assert m["train_pending"] == 0 and m["train_done"] + m["train_dropped"] == 40


@pytest.mark.timeout(900)  # a hang guard: candleray live waits for candles as long as it takes
def test_ccxt_source_predicts_each_candle_once_after_the_exchange_closed_it(
    ray_cluster, tiny, capsys
):
    """Against the local fake Binance, whose clock moves one 1m bar at a time: the session
    warms up on the exchange's history, then each of N newly closed bars is predicted once,
    with the values the exchange settled on (the open bar is served half-formed)."""
    import threading

    import pandas as pd
    from fake_exchange import FakeBinance

    from actors.hosts.host import host_journal
    from pipelines.config import load_config

    n, first = 4, 100  # bars 0..99 closed when the session starts: its warm-up
    with FakeBinance(start=pd.Timestamp("2024-01-01", tz="UTC"), bars=1, interval="1m") as fake:
        fake.partial_open_bar = True
        fake.now_ms = fake.open_ms(first) + 30_000
        stop = threading.Event()

        def exchange_clock() -> None:
            # only once the warm-up asked for history by time, one bar closes every 0.4 s, n
            # of them; then the clock stays in bar first + n, still open
            # no give-up time: a loaded machine may take minutes to start the session, and a
            # clock that moved before the warm-up would test another case (or none: a hang).
            # The test's timeout mark is the hang guard
            while not any("startTime" in r.params for r in fake.calls()):
                if stop.wait(0.1):
                    return
            for k in range(1, n + 1):
                if stop.wait(0.4):
                    return
                fake.now_ms = fake.open_ms(first + k) + 30_000

        over = run_ccxt_live(fake, tiny, n, exchange_clock, stop)
        open_bar = fake.last_bar()
    (s,) = json.loads(capsys.readouterr().out)
    m = s["metrics"]
    assert s["symbol"] == "binance:BTC/USDT@1m"
    assert m["candles"] == n and m["predictions"] == n and m["settled"] == n - 1
    assert open_bar == first + n  # the CLI stopped with bar first + n still open
    j = host_journal(load_config(None, over), 0)
    (sid,) = j.session_ids()
    preds = [t for t, _ in j.events(sid, "prediction")]
    step = 60_000_000_000
    start_ns = fake.open_ms(first) * 1_000_000
    assert preds == [start_ns + k * step for k in range(n)]  # each once, in order, none skipped
    got = j.candles(sid, limit=1000)
    assert got[0].time < start_ns  # warmed up on the exchange's closed history
    closed = fake.expected("BTCUSDT", first, first + n - 1)
    live = [c for c in got if c.time >= start_ns]
    assert [c.time for c in live] == preds
    for c, (_, row) in zip(live, closed.iterrows(), strict=True):
        assert c.values() == pytest.approx(tuple(row[["open", "high", "low", "close", "volume"]]))


@pytest.mark.timeout(900)  # a hang guard, as above
def test_ccxt_candles_n_stops_at_exactly_n_when_one_poll_brings_more(ray_cluster, tiny, capsys):
    """The exchange's clock jumps five bars at once, so one poll brings five closed candles:
    with --candles 3 each session takes exactly three (the first three, in order) and the
    command stops there, the session finished."""
    import threading

    import pandas as pd
    from fake_exchange import FakeBinance

    from actors.hosts.host import host_journal
    from pipelines.config import load_config

    n, jump, first = 3, 5, 100
    with FakeBinance(start=pd.Timestamp("2024-01-01", tz="UTC"), bars=1, interval="1m") as fake:
        fake.now_ms = fake.open_ms(first) + 30_000
        stop = threading.Event()

        def exchange_clock() -> None:  # once warmed up: bars first..first+jump-1 close at once
            while not any("startTime" in r.params for r in fake.calls()):  # no give-up time
                if stop.wait(0.1):
                    return
            fake.now_ms = fake.open_ms(first + jump) + 30_000

        over = run_ccxt_live(fake, tiny, n, exchange_clock, stop)
    (s,) = json.loads(capsys.readouterr().out)
    m = s["metrics"]
    assert (m["candles"], m["predictions"], s["state"]) == (n, n, "finished"), m
    j = host_journal(load_config(None, over), 0)
    (sid,) = j.session_ids()
    step, start_ns = 60_000_000_000, fake.open_ms(first) * 1_000_000
    preds = [t for t, _ in j.events(sid, "prediction")]
    assert preds == [start_ns + k * step for k in range(n)]  # the first n, none past them
    assert max(c.time for c in j.candles(sid, limit=1000)) == preds[-1]


class DrainingHost:
    """A session host handle whose one session has taken its candles and whose training
    settles one sample per look (``stuck``: never), answered through Ray's object store."""

    def __init__(self, pending: int, stuck: bool = False) -> None:
        import ray

        self.ray, self.pending, self.stuck, self.looks = ray, pending, stuck, 0
        self.status = SimpleNamespace(remote=self._status)
        self.stats = SimpleNamespace(remote=lambda: self.ray.put({}))

    def _status(self, sid: str):
        self.looks += 1
        m = {"candles": 5, "train_requested": 5, "train_dropped": 0, "train_timeouts": 0}
        m |= {"train_pending": self.pending, "train_done": 5 - self.pending}
        m |= {"predictions": 5, "direction_acc": None, "direction_acc_rolling": None}
        m |= {"paper_pnl": 0.0, "trades": 0, "win_rate": None, "loss_trend": "flat"}
        if not self.stuck and self.pending:
            self.pending -= 1
        return self.ray.put({"id": sid, "mode": "every_candle", "state": "finished", "metrics": m})


def test_candles_n_waits_for_the_training_its_candles_asked_for(ray_cluster, make_cfg):
    """--candles N returns only once no sample is pending (the hosts' shutdown after it would
    discard them), and its final line shows the pending count."""
    import argparse

    from pipelines.cli.live import _line, _watch

    args = argparse.Namespace(candles=5, json=True)
    host = DrainingHost(pending=3)
    (st,) = _watch([(host, "h0-x")], [host], args, make_cfg())
    assert st["metrics"]["train_pending"] == 0 and host.looks == 4
    assert "pending 0" in _line(st)


def test_candles_n_stops_with_pending_shown_when_training_is_stuck(ray_cluster, make_cfg, capsys):
    import argparse

    from pipelines.cli.live import _line, _watch

    args = argparse.Namespace(candles=5, json=True)
    host = DrainingHost(pending=2, stuck=True)
    (st,) = _watch([(host, "h0-x")], [host], args, make_cfg("ray.call_timeout_s=1"))
    assert st["metrics"]["train_pending"] == 2 and "pending 2" in _line(st)
    assert "2 sample(s) pending, not trained" in capsys.readouterr().err
