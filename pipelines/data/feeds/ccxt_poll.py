"""Polling a ccxt exchange: each closed candle once, in order, judged by the answer itself.

One polling round (:meth:`CcxtPollFeed.poll`):

1. The newest ``poll_limit`` candles (``fetch_ohlcv`` without ``since``). Rows are sorted
   and de-duplicated, so repeated and out-of-order answers yield each candle once, in order.
2. Rows opening after the exchange's "now" are garbled (ms read as us, a bad proxy or cache):
   each is logged, counted under rule ``future-timestamp`` and dropped. "Now" is a
   ``fetch_time()`` taken *after* the answer, when the exchange has fetchTime (``server_time``;
   by default ``exchange.has['fetchTime']``); without it, the local clock plus
   ``data.ccxt.clock_slack_s``.
3. A candle is closed when the same answer holds a newer bar: the exchange had moved past it
   when it computed that answer. The newest row is the bar still open and is never emitted,
   even when a clock says its close has passed: a late (stale) answer's newest row may be the
   half-formed bar, and a clock taken beside the answer cannot tell. Nothing carries over from
   one answer to the next, so one bad answer cannot move the feed's idea of "closed".
   Only closed candles newer than the last one handled are kept.
4. Bars missing between the last candle handled and the newest new one (the feed was
   paused, or the answer skipped bars) are backfilled with ``fetch_ohlcv(since=...)``, page by page.
   Bars the exchange still does not have are reported as a gap and left out.
5. Each candle goes through the ``CandleGate``: a bad one (NaN, non-positive price,
   high below open/close, ...) is logged, counted under its rule and skipped.

Network errors, rate limits and garbled answers are retried with backoff by
``CcxtSource.call`` (the project's one ccxt error mapping, ``pipelines.retry``); when the
retries run out the round raises ``DataSourceError`` and nothing is lost: the next round
starts from the last candle handled.

With ``after=None`` the first round emits only the newest closed candle; pass the open time
of the last candle a session already has to get everything after it, or call
:meth:`CcxtPollFeed.history` first (the warm-up bars, closed by the same rule; polling then
starts after them).
"""

from __future__ import annotations

import functools
import logging
import math
import time as _time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from conf.schema import CcxtConfig
from pipelines.data.candles import timeframe_seconds
from pipelines.data.feeds.base import Candle, CandleGate, FeedStats, candles_frame
from pipelines.data.sources import SymbolSpec
from pipelines.data.sources.ccxt_source import CcxtSource, build_exchange
from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

# fetch_time and the klines may be answered by different machines of the exchange, whose
# clocks differ by milliseconds: a bar that opened "just after" the time answer is real
SERVER_SKEW_MS = 1_000

Rows = dict[int, list[float]]  # open time (ms) -> [o, h, l, c, v]


def _ts(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def default_poll_interval(timeframe: str) -> float:
    """A twentieth of a bar, between 1 and 30 seconds: a closed 1m bar shows within ~3 s."""
    return float(min(30.0, max(1.0, timeframe_seconds(timeframe) / 20)))


class CcxtPollFeed:
    """Closed candles of ``symbol`` at ``timeframe`` from ccxt exchange ``exchange_id``.

    ``exchange`` is an already-built ccxt exchange (tests pass one pointed at a local
    fake); ``sleep`` waits between rounds and between retries; ``cache_dir`` is where the
    underlying ``CcxtSource`` keeps its cache (the feed itself writes nothing, its
    ``history`` does). ``server_time``: bound rows by the exchange's ``fetch_time()`` (None:
    when ``exchange.has['fetchTime']``), else by ``wall_clock`` (epoch seconds) plus
    ``cfg.clock_slack_s``.
    """

    def __init__(
        self,
        exchange_id: str,
        symbol: str,
        timeframe: str,
        cfg: CcxtConfig,
        *,
        exchange: Any = None,
        cache_dir: str = "cache",
        after: pd.Timestamp | str | None = None,
        poll_limit: int = 5,
        poll_interval_s: float | None = None,
        server_time: bool | None = None,
        sleep: Callable[[float], None] = _time.sleep,
        wall_clock: Callable[[], float] = _time.time,
    ) -> None:
        self.spec = SymbolSpec(exchange_id, symbol, timeframe)
        self.step_ms = timeframe_seconds(timeframe) * 1000
        if poll_limit < 2:
            raise ValueError(
                f"poll_limit must be >= 2 (the open bar and one closed), got {poll_limit}"
            )
        if not (math.isfinite(cfg.clock_slack_s) and cfg.clock_slack_s >= 0):
            raise ConfigError(
                f"data.ccxt.clock_slack_s={cfg.clock_slack_s!r} is not allowed; use seconds "
                ">= 0 (default 300): how far a row may open past the local clock"
            )
        self.poll_limit = poll_limit
        self.poll_interval_s = (
            default_poll_interval(timeframe) if poll_interval_s is None else poll_interval_s
        )
        self.stats = FeedStats()
        self._cfg = cfg
        self._ex = exchange if exchange is not None else build_exchange(exchange_id, cfg)
        # 42 of ccxt's exchanges (bitstamp, gemini, ...) have no fetchTime: the local clock
        # then bounds the rows, and closedness never needed a clock
        has = getattr(self._ex, "has", None) or {}
        self.server_time = bool(has.get("fetchTime")) if server_time is None else server_time
        self._source = CcxtSource(exchange_id, cfg, cache_dir, exchange=self._ex, sleep=sleep)
        self._cache_dir = cache_dir
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._now_ms = 0  # the newest exchange time seen (reported only; decides nothing)
        self._gate = CandleGate(self.spec.key, timeframe, self.stats)
        if after is not None:
            self._gate.start_after(_utc(after))

    @property
    def exchange_now(self) -> pd.Timestamp | None:
        """The newest exchange time seen, its clock or its newest row (None before a round)."""
        return _ts(self._now_ms) if self._now_ms else None

    # -- one round --------------------------------------------------------------------------
    def poll(self) -> list[Candle]:
        """One round: the candles that closed since the last one handled, in order."""
        self.stats.polls += 1
        rows = self._answer()
        newest = max(rows, default=None)
        # closed = a newer bar in the same answer (module doc, step 3)
        closed = [] if newest is None else sorted(t for t in rows if t + self.step_ms <= newest)
        seen = self._seen_ms()
        if seen is None:  # first round without a starting point: the newest closed bar only
            new = closed[-1:]
        else:
            self.stats.repeated += sum(1 for t in rows if t <= seen)
            new = [t for t in closed if t > seen]
            # bars between the last one handled and the newest closed one that the answer
            # lacks (the feed was paused, or the answer skipped some): ask for them by time
            missing = (
                [t for t in range(seen + self.step_ms, new[-1], self.step_ms) if t not in rows]
                if new
                else []
            )
            if missing:
                got = self._backfill(missing[0], missing[-1])
                self.stats.backfilled += len(set(got) & set(missing))
                rows.update(got)
                new = sorted(set(new) | set(got))
        out = []
        for t in new:
            candle = self._gate.admit(_ts(t), rows[t])
            if candle is not None:
                out.append(candle)
        return out

    def candles(self) -> Iterator[Candle]:
        """Poll forever: each new closed candle once, in order; sleeps between rounds."""
        while True:
            yield from self.poll()
            self._sleep(self.poll_interval_s)

    def history(self, bars: int) -> pd.DataFrame:
        """The newest ``bars`` closed candles (candle schema), for a session to warm up on.

        Closed by the rule of :meth:`poll`: everything before the newest row of a fresh
        answer. Paged through the cache (``CcxtSource.fetch``); the feed then starts after
        the last of them, so polling neither repeats nor skips a bar.
        """
        rows = self._answer()
        if not rows:
            return candles_frame([])
        opened = _ts(max(rows))  # the bar still open: every bar before it is closed
        src = CcxtSource(
            self.spec.source,
            self._cfg,
            self._cache_dir,
            exchange=self._ex,
            now=lambda: opened,
            sleep=self._sleep,
        )
        step = pd.Timedelta(milliseconds=self.step_ms)
        frame = src.fetch(self.spec.symbol, self.spec.timeframe, since=opened - (bars + 1) * step)
        frame = frame.iloc[-bars:] if bars > 0 else frame.iloc[:0]
        if len(frame) and (self._gate.last is None or frame.index[-1] > self._gate.last):
            self._gate.start_after(frame.index[-1])
        return frame

    # -- helpers ----------------------------------------------------------------------------
    def _answer(self) -> Rows:
        """The newest ``poll_limit`` rows, those opening after the exchange's now dropped."""
        sym, tf = self.spec.symbol, self.spec.timeframe
        rows = self._rows(
            self._source.call(
                f"polling {sym} {tf} candles from {self.spec.source}",
                functools.partial(self._ex.fetch_ohlcv, sym, tf, limit=self.poll_limit),
                sym,
            )
        )
        latest, clock = self._latest_open_ms()
        for t in sorted(t for t in rows if t > latest):
            del rows[t]  # never a "newer bar" that would close the open one
            self._gate.skip(
                _ts(t),
                "future-timestamp",
                f"it opens after {clock}: a garbled row (e.g. a time in the wrong unit)",
            )
        if rows:
            self._now_ms = max(self._now_ms, max(rows))
        return rows

    def _latest_open_ms(self) -> tuple[int, str]:
        """The latest open time (ms) a real row can have now, and the clock that says so."""
        if self.server_time:
            # asked after the answer: every bar in it had opened by then
            server = self._source.call(
                f"asking {self.spec.source} for its time", self._ex.fetch_time, self.spec.symbol
            )
            if server:
                self._now_ms = max(self._now_ms, int(server))
                return int(server) + SERVER_SKEW_MS, f"the exchange's clock {_ts(int(server))}"
        local = int(self._wall_clock() * 1000)
        slack = self._cfg.clock_slack_s
        return local + int(slack * 1000), (
            f"the local clock {_ts(local)} + data.ccxt.clock_slack_s ({slack:g} s); if the "
            "local clock is behind, sync it (NTP) or raise data.ccxt.clock_slack_s"
        )

    def _seen_ms(self) -> int | None:
        seen = self._gate.seen
        return None if seen is None else int(seen.value // 1_000_000)

    def _rows(self, answer: list[list] | None) -> Rows:
        """ccxt rows -> {open ms: [o, h, l, c, v]}; a row without a time is skipped and counted."""
        out: Rows = {}
        for r in answer or []:
            if not r or r[0] is None or len(r) < 6:
                self.stats.skipped["timestamp"] = self.stats.skipped.get("timestamp", 0) + 1
                logger.warning(
                    "%s: a candle row without time or fields skipped: %r", self.spec.key, r
                )
                continue
            vals = [math.nan if v is None else float(v) for v in r[1:6]]
            out[int(r[0])] = vals  # a repeat within one answer: the later row wins
        return out

    def _backfill(self, a: int, b: int) -> Rows:
        """Closed rows with open time in [a, b] ms, page by page from ``a``."""
        sym, tf = self.spec.symbol, self.spec.timeframe
        logger.info(
            "%s: backfilling %d bar(s) from %s", self.spec.key, (b - a) // self.step_ms + 1, _ts(a)
        )
        got: Rows = {}
        cursor = a
        while cursor <= b:
            page = self._rows(
                self._source.call(
                    f"backfilling {sym} {tf} candles from {self.spec.source} since {_ts(cursor)}",
                    functools.partial(
                        self._ex.fetch_ohlcv, sym, tf, since=cursor, limit=self._cfg.limit
                    ),
                    sym,
                )
            )
            ahead = [t for t in page if t >= cursor]
            if not ahead:  # the exchange has nothing more (or ignores since)
                break
            got.update({t: v for t, v in page.items() if a <= t <= b})
            cursor = int(np.max(ahead)) + self.step_ms
        return got
