"""CcxtSource end to end: ccxt's own binance client against a local fake Binance."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from fake_exchange import FakeBinance, binance_client

from conf.schema import CcxtConfig
from pipelines.data.sources.cache import CandleCache
from pipelines.data.sources.ccxt_source import CcxtSource
from pipelines.errors import DataSourceError, TemporaryError
from pipelines.retry import retry

START = pd.Timestamp("2024-01-01", tz="UTC")
H = pd.Timedelta(hours=1)
CFG = CcxtConfig(limit=100, max_retries=3, backoff_s=0.01, backoff_max_s=0.02, timeout_ms=500)


@pytest.fixture(scope="module")
def server():
    with FakeBinance(start=START, bars=350, interval="1h", slow_s=1.0) as srv:
        yield srv


@pytest.fixture
def fake(server: FakeBinance) -> FakeBinance:
    server.reset()
    server.bars = 350
    server.page_cap = 1000
    return server


def make_source(fake: FakeBinance, cache_dir: Path, cfg: CcxtConfig = CFG) -> CcxtSource:
    # "now" is half-way through the newest bar the server has, so that bar is still open
    return CcxtSource(
        "binance",
        cfg,
        cache_dir,
        exchange=binance_client(fake, timeout_ms=500),
        now=lambda: START + fake.bars * H - H / 2,
    )


def start_times(fake: FakeBinance) -> list[pd.Timestamp]:
    return [
        pd.Timestamp(int(r.params["startTime"]), unit="ms", tz="UTC") for r in fake.calls("klines")
    ]


def cache_file(tmp_path: Path) -> Path:
    return CandleCache(tmp_path).path("binance", "BTC/USDT", "1h")


# -- pagination, open bar, incremental updates ---------------------------------------------
def test_pagination_returns_every_closed_bar_exactly_once(fake, tmp_path):
    got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 348))
    assert start_times(fake) == [START, START + 100 * H, START + 200 * H, START + 300 * H]
    assert {r.params["limit"] for r in fake.calls("klines")} == {"100"}
    assert len(fake.calls("exchangeInfo")) == 1
    pd.testing.assert_frame_equal(CandleCache(tmp_path).read("binance", "BTC/USDT", "1h"), got)


def test_since_until_slice_stops_paging_at_until(fake, tmp_path):
    got = make_source(fake, tmp_path).fetch(
        "ETH/USDT", "1h", since=START + 10 * H, until=START + 120 * H
    )
    pd.testing.assert_frame_equal(got, fake.expected("ETHUSDT", 10, 120))
    assert start_times(fake) == [START + 10 * H, START + 110 * H]


def test_pages_shorter_than_the_limit_do_not_end_the_history(fake, tmp_path):
    fake.page_cap = 60  # the exchange answers fewer rows than asked for
    got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 348))
    assert start_times(fake) == [START + i * 60 * H for i in range(6)]


def test_no_since_means_from_the_first_bar_the_exchange_has(fake, tmp_path):
    src = make_source(fake, tmp_path)
    pd.testing.assert_frame_equal(src.fetch("ETH/USDT", "1h"), fake.expected("ETHUSDT", 0, 348))
    assert start_times(fake)[0] == pd.Timestamp(0, tz="UTC")
    fake.reset()  # the cache is up to date; one request checks for history before it
    pd.testing.assert_frame_equal(src.fetch("ETH/USDT", "1h"), fake.expected("ETHUSDT", 0, 348))
    assert start_times(fake) == [pd.Timestamp(0, tz="UTC")]


def test_still_open_bar_is_not_cached_and_is_fetched_once_closed(fake, tmp_path):
    src = make_source(fake, tmp_path)
    got = src.fetch("BTC/USDT", "1h", since=START)
    served_last = fake.calls("klines")[-1]
    assert served_last.fault == "ok"  # the server did send bar 349 (still open) ...
    assert got.index[-1] == START + 348 * H  # ... but it is neither returned nor cached
    cached = CandleCache(tmp_path).read("binance", "BTC/USDT", "1h")
    assert cached.index[-1] == START + 348 * H

    fake.reset()
    fake.bars = 351  # an hour later: bar 349 has closed, bar 350 is open
    got = src.fetch("BTC/USDT", "1h", since=START)
    assert start_times(fake) == [START + 349 * H]
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 349))


def test_incremental_update_requests_only_the_missing_tail(fake, tmp_path):
    fake.bars = 200
    src = make_source(fake, tmp_path)
    src.fetch("BTC/USDT", "1h", since=START)

    fake.reset()
    fake.bars = 350
    got = src.fetch("BTC/USDT", "1h", since=START)
    assert start_times(fake)[0] == START + 199 * H  # first bar after the cached 0..198
    assert start_times(fake) == [START + 199 * H, START + 299 * H]
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 348))
    cached = CandleCache(tmp_path).read("binance", "BTC/USDT", "1h")
    assert cached.index.is_unique and len(cached) == 349

    fake.reset()  # up to date: no request at all, not even for the markets
    pd.testing.assert_frame_equal(src.fetch("BTC/USDT", "1h", since=START), got)
    assert fake.requests == []


def test_earlier_since_fetches_only_the_missing_head(fake, tmp_path):
    src = make_source(fake, tmp_path)
    src.fetch("BTC/USDT", "1h", since=START + 250 * H)
    fake.reset()
    got = src.fetch("BTC/USDT", "1h", since=START + 40 * H, until=START + 300 * H)
    assert start_times(fake) == [START + 40 * H, START + 140 * H, START + 240 * H]
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 40, 300))
    cached = CandleCache(tmp_path).read("binance", "BTC/USDT", "1h")
    pd.testing.assert_frame_equal(cached, fake.expected("BTCUSDT", 40, 348))


# -- temporary faults are retried ----------------------------------------------------------
def test_rate_limit_then_5xx_then_success(fake, tmp_path, caplog):
    fake.plan(["429", "500", "502", "ok", "503", "reset"])
    with caplog.at_level(logging.WARNING, logger="pipelines.retry"):
        got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 348))
    assert [r.fault for r in fake.calls("klines")] == [
        "429",
        "500",
        "502",
        "ok",
        "503",
        "reset",
        "ok",
        "ok",
        "ok",
    ]
    retried = [r.getMessage() for r in caplog.records]
    assert len(retried) == 5 and all("BTC/USDT" in m for m in retried)


def test_timeout_then_success(fake, tmp_path):
    fake.plan(["timeout"])
    got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START, until=START + 50 * H)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 50))
    assert [r.fault for r in fake.calls("klines")] == ["timeout", "ok"]


def test_markets_request_is_retried_too(fake, tmp_path):
    fake.plan(["503", "timeout", "badjson"], route="exchangeInfo")
    got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START, until=START + 5 * H)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 5))
    assert [r.fault for r in fake.calls("exchangeInfo")] == ["503", "timeout", "badjson", "ok"]


@pytest.mark.parametrize("fault", ["badjson", "html200"])
def test_malformed_answer_is_retried_not_taken_for_the_end_of_data(fake, tmp_path, fault):
    # ccxt turns a 200 with a non-JSON body into [] (no error); that must not end paging
    fake.plan(["ok", fault])
    got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START)
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 348))
    assert [r.fault for r in fake.calls("klines")][:3] == ["ok", fault, "ok"]


# -- failures leave the cache untouched ----------------------------------------------------
def test_malformed_answers_until_retries_run_out(fake, tmp_path):
    fake.bars = 120
    src = make_source(fake, tmp_path)
    src.fetch("BTC/USDT", "1h", since=START)
    before = cache_file(tmp_path).read_bytes()

    fake.bars = 350
    fake.plan(["badjson"] * 4)
    with pytest.raises(DataSourceError, match=r"malformed JSON") as info:
        src.fetch("BTC/USDT", "1h", since=START)
    assert "BTC/USDT" in str(info.value) and "4 time(s)" in str(info.value)
    assert cache_file(tmp_path).read_bytes() == before


def test_exhausted_retries_mid_pagination_leave_cache_byte_identical(fake, tmp_path):
    fake.bars = 120
    src = make_source(fake, tmp_path)
    src.fetch("BTC/USDT", "1h", since=START)
    before = cache_file(tmp_path).read_bytes()

    fake.reset()
    fake.bars = 350
    fake.plan(["ok", "503", "429", "timeout", "503"])  # page 2 fails 1 + max_retries times
    with pytest.raises(DataSourceError) as info:
        src.fetch("BTC/USDT", "1h", since=START)
    msg = str(info.value)
    assert "BTC/USDT" in msg and "4 time(s)" in msg and "ExchangeNotAvailable" in msg
    assert isinstance(info.value.__cause__, TemporaryError)
    assert type(info.value) is DataSourceError  # not a TemporaryError: callers must not retry
    assert len(fake.calls("klines")) == 5
    assert cache_file(tmp_path).read_bytes() == before
    assert [p.name for p in cache_file(tmp_path).parent.iterdir()] == [cache_file(tmp_path).name]


def test_client_error_is_not_retried(fake, tmp_path):
    fake.plan(["badrequest"])
    with pytest.raises(DataSourceError, match=r"refused the request \(BadRequest") as info:
        make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START)
    assert not isinstance(info.value, TemporaryError)
    assert len(fake.calls("klines")) == 1
    assert not cache_file(tmp_path).exists()


def test_crash_while_writing_the_cache_keeps_the_old_file(fake, tmp_path, monkeypatch):
    fake.bars = 120
    src = make_source(fake, tmp_path)
    src.fetch("BTC/USDT", "1h", since=START)
    before = cache_file(tmp_path).read_bytes()

    def half_written(self, path, *args, **kwargs):
        Path(path).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_written)
    fake.bars = 350
    with pytest.raises(OSError, match="disk full"):
        src.fetch("BTC/USDT", "1h", since=START)
    assert cache_file(tmp_path).read_bytes() == before
    assert [p.name for p in cache_file(tmp_path).parent.iterdir()] == [cache_file(tmp_path).name]


# -- user errors ---------------------------------------------------------------------------
def test_unknown_symbol(fake, tmp_path):
    with pytest.raises(
        DataSourceError,
        match=r"unknown symbol 'BTC/USDX' on exchange binance"
        r".*close matches: BTC/USDT.*exchange\.symbols",
    ):
        make_source(fake, tmp_path).fetch("BTC/USDX", "1h", since=START)
    assert fake.calls("klines") == []


def test_unknown_exchange_id(tmp_path):
    with pytest.raises(
        DataSourceError,
        match=r"unknown ccxt exchange id 'binanse'.*binance"
        r".*ccxt\.exchanges",
    ):
        CcxtSource("binanse", CFG, tmp_path)


def test_timeframe_the_exchange_does_not_offer(fake, tmp_path):
    with pytest.raises(DataSourceError, match=r"binance has no '7m' candles; it offers .*1h"):
        make_source(fake, tmp_path).fetch("BTC/USDT", "7m", since=START)
    assert fake.calls("klines") == []


# -- the cache on its own ------------------------------------------------------------------
def test_cache_write_failure_midway_keeps_old_file_and_leaves_no_temp(tmp_path):
    frame = FakeBinance(start=START, bars=10).expected("BTCUSDT", 0, 9)
    CandleCache(tmp_path).write("binance", "BTC/USDT", "1h", frame.iloc[:5])
    path = cache_file(tmp_path)
    before = path.read_bytes()

    def crash(df: pd.DataFrame, tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt  # even an interrupt must not leave a broken cache

    with pytest.raises(KeyboardInterrupt):
        CandleCache(tmp_path, writer=crash).write("binance", "BTC/USDT", "1h", frame)
    assert path.read_bytes() == before
    assert list(path.parent.iterdir()) == [path]


def test_corrupt_cache_file_is_treated_as_empty_and_replaced(fake, tmp_path, caplog):
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a parquet file")
    with caplog.at_level(logging.WARNING, logger="pipelines.data.sources.cache"):
        got = make_source(fake, tmp_path).fetch("BTC/USDT", "1h", since=START, until=START + 9 * H)
    assert "unreadable" in caplog.text
    pd.testing.assert_frame_equal(got, fake.expected("BTCUSDT", 0, 9))
    pd.testing.assert_frame_equal(CandleCache(tmp_path).read("binance", "BTC/USDT", "1h"), got)


def test_cache_names_are_distinct_and_merge_prefers_new_rows(tmp_path):
    cache = CandleCache(tmp_path)
    assert cache.path("x", "BTC/USDT", "1h") != cache.path("x", "BTC-USDT", "1h")
    assert cache.path("x", "BTC/USDT:USDT", "1h").parent == tmp_path / "x"
    frame = FakeBinance(start=START, bars=10).expected("BTCUSDT", 0, 9)
    newer = frame.iloc[3:8] * 1.01
    merged = CandleCache.merge(frame.iloc[:6], newer)
    assert merged.index.is_monotonic_increasing and len(merged) == 8
    pd.testing.assert_frame_equal(merged.iloc[3:8], newer)
    pd.testing.assert_frame_equal(merged.iloc[:3], frame.iloc[:3])


# -- the retry helper ----------------------------------------------------------------------
def test_retry_backs_off_doubling_up_to_the_cap_then_names_what_failed():
    waits: list[float] = []
    calls = 0

    def always_down() -> None:
        nonlocal calls
        calls += 1
        raise TemporaryError(f"down #{calls}")

    with pytest.raises(DataSourceError, match=r"fetching X failed 5 time\(s\).*down #5") as info:
        retry(
            always_down,
            attempts=5,
            backoff_s=0.1,
            backoff_max_s=0.3,
            what="fetching X",
            sleep=waits.append,
        )
    assert waits == [0.1, 0.2, 0.3, 0.3]
    assert str(info.value.__cause__) == "down #5"


def test_retry_returns_after_temporary_failures_and_passes_other_errors_through():
    outcomes = iter([TemporaryError("blip"), TemporaryError("blip"), "done"])

    def flaky() -> str:
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    assert (
        retry(flaky, attempts=3, backoff_s=0, backoff_max_s=0, what="x", sleep=lambda s: None)
        == "done"
    )

    def broken() -> None:
        raise DataSourceError("bad symbol")

    waits: list[float] = []
    with pytest.raises(DataSourceError, match="^bad symbol$"):
        retry(broken, attempts=3, backoff_s=1, backoff_max_s=1, what="x", sleep=waits.append)
    assert waits == []
