"""Polling a ccxt exchange: each closed candle once, in order, judged by the exchange's time.

One polling round (:meth:`CcxtPollFeed.poll`):

1. The exchange's "now": ``fetch_time()`` (with ``server_time=True``), raised to the open
   time of the newest candle answered (the exchange has opened that bar, so its clock is
   past it) and never moved back, so a late answer cannot undo what an earlier one showed.
   The local clock is never used: a skewed laptop neither emits an open bar nor holds back
   a closed one.
2. The newest ``poll_limit`` candles (``fetch_ohlcv`` without ``since``). A candle is
   closed when its open time + timeframe <= the exchange's now; only closed candles newer
   than the last one handled are kept. Rows are sorted and de-duplicated first, so
   repeated and out-of-order answers yield each candle once, in order.
3. Bars missing between the last candle handled and the newest new one (the feed was
   paused, or the answer skipped bars) are backfilled with ``fetch_ohlcv(since=...)``, page by page.
   Bars the exchange still does not have are reported as a gap and left out.
4. Each candle goes through the ``CandleGate``: a bad one (NaN, non-positive price,
   high below open/close, ...) is logged, counted under its rule and skipped.

Network errors, rate limits and garbled answers are retried with backoff by
``CcxtSource.call`` (the project's one ccxt error mapping, ``pipelines.retry``); when the
retries run out the round raises ``DataSourceError`` and nothing is lost: the next round
starts from the last candle handled.

With ``after=None`` the first round emits only the newest closed candle; pass the open time
of the last candle a session already has (its history) to get everything after it.
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
from pipelines.data.feeds.base import Candle, CandleGate, FeedStats
from pipelines.data.sources import SymbolSpec
from pipelines.data.sources.ccxt_source import CcxtSource, build_exchange

logger = logging.getLogger(__name__)

Rows = dict[int, list[float]]  # open time (ms) -> [o, h, l, c, v]


def _ts(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def default_poll_interval(timeframe: str) -> float:
    """A twentieth of a bar, between 1 and 30 seconds: a closed 1m bar shows within ~3 s."""
    return float(min(30.0, max(1.0, timeframe_seconds(timeframe) / 20)))


class CcxtPollFeed:
    """Closed candles of ``symbol`` at ``timeframe`` from ccxt exchange ``exchange_id``.

    ``exchange`` is an already-built ccxt exchange (tests pass one pointed at a local
    fake); ``sleep`` waits between rounds and between retries; ``cache_dir`` is where the
    underlying ``CcxtSource`` keeps its cache (the feed itself writes nothing).
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
        server_time: bool = True,
        sleep: Callable[[float], None] = _time.sleep,
    ) -> None:
        self.spec = SymbolSpec(exchange_id, symbol, timeframe)
        self.step_ms = timeframe_seconds(timeframe) * 1000
        if poll_limit < 2:
            raise ValueError(
                f"poll_limit must be >= 2 (the open bar and one closed), got {poll_limit}"
            )
        self.poll_limit = poll_limit
        self.poll_interval_s = (
            default_poll_interval(timeframe) if poll_interval_s is None else poll_interval_s
        )
        self.server_time = server_time
        self.stats = FeedStats()
        self._cfg = cfg
        self._ex = exchange if exchange is not None else build_exchange(exchange_id, cfg)
        self._source = CcxtSource(exchange_id, cfg, cache_dir, exchange=self._ex, sleep=sleep)
        self._sleep = sleep
        self._now_ms = 0  # the exchange's clock as last seen; never moves back
        self._gate = CandleGate(self.spec.key, timeframe, self.stats)
        if after is not None:
            ts = pd.Timestamp(after)
            self._gate.start_after(
                ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
            )

    @property
    def exchange_now(self) -> pd.Timestamp | None:
        """The exchange's time as last seen (None before the first round)."""
        return _ts(self._now_ms) if self._now_ms else None

    # -- one round --------------------------------------------------------------------------
    def poll(self) -> list[Candle]:
        """One round: the candles that closed since the last one handled, in order."""
        self.stats.polls += 1
        sym, tf = self.spec.symbol, self.spec.timeframe
        if self.server_time:
            server = self._source.call(
                f"asking {self.spec.source} for its time", self._ex.fetch_time, sym
            )
            if server:
                self._now_ms = max(self._now_ms, int(server))
        rows = self._rows(
            self._source.call(
                f"polling {sym} {tf} candles from {self.spec.source}",
                functools.partial(self._ex.fetch_ohlcv, sym, tf, limit=self.poll_limit),
                sym,
            )
        )
        if rows:
            self._now_ms = max(self._now_ms, max(rows))
        closed = sorted(t for t in rows if t + self.step_ms <= self._now_ms)
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

    # -- helpers ----------------------------------------------------------------------------
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
