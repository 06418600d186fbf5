"""Candles from any ccxt exchange: paginated ``fetch_ohlcv``, retries, incremental cache.

Every call into ccxt goes through :meth:`CcxtSource.call`, the one place where ccxt
errors become candleray errors:

- ``ccxt.NetworkError`` and subclasses (``RequestTimeout``, ``ExchangeNotAvailable`` for
  5xx, ``DDoSProtection`` for 418/429, ``RateLimitExceeded``) -> ``TemporaryError``
- ``ccxt.BadResponse`` and a body that is not JSON -> ``TemporaryError``. ccxt 4.5 does
  *not* raise on a malformed 200 answer: it returns ``[]`` from ``fetch_ohlcv`` and no
  markets from ``load_markets``, which would read as "no more data". So the parsed body is
  kept (``enableLastJsonResponse``) and checked; a truncated or HTML answer from a proxy
  usually passes, and the requests are reads, so it is retried.
- ``ccxt.BadSymbol`` -> ``DataSourceError`` naming the symbol and close matches
- any other ``ccxt.BaseError`` -> ``DataSourceError``, not retried

``TemporaryError`` is retried by :func:`pipelines.retry.retry`; when retries run out the
cache is left exactly as it was, because it is written once, atomically, at the end.

The cache holds one contiguous range per (exchange, symbol, timeframe), so what is
missing is at most a head (before the first cached bar) and a tail (after the last).
"""

from __future__ import annotations

import difflib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ccxt
import numpy as np
import pandas as pd

from conf.schema import CcxtConfig
from pipelines.data.candles import COLUMNS, timeframe_seconds, validate_candles
from pipelines.data.sources.cache import CandleCache
from pipelines.errors import DataSourceError, TemporaryError
from pipelines.retry import retry

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], pd.Timestamp]


def _utc_now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _to_utc(ts: pd.Timestamp | str | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)  # .value is always nanoseconds


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def build_exchange(exchange_id: str, cfg: CcxtConfig) -> Any:
    """A ccxt exchange object for ``exchange_id`` with the configured timeout and options."""
    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id.lower(), ccxt.exchanges, n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise DataSourceError(
            f"unknown ccxt exchange id {exchange_id!r}{hint}. Valid ids are the "
            f"{len(ccxt.exchanges)} names in ccxt.exchanges (lower case, e.g. binance, kraken, "
            "coinbase); fix the source part of 'source:SYMBOL' in data.symbols"
        )
    return getattr(ccxt, exchange_id)(
        {"enableRateLimit": True, "timeout": cfg.timeout_ms, **cfg.options}
    )


def _missing(cached: pd.DataFrame, lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    """Open-time ranges [a, b] (ms, inclusive) to download so the cache covers [lo, hi].

    Ranges always reach the cached block (head up to its first bar, tail from its last),
    so the cache stays one contiguous range and a later call never has to look for holes.
    """
    if hi < lo:
        return []
    if len(cached) == 0:
        return [(lo, hi)]
    first, last = _ms(cached.index[0]), _ms(cached.index[-1])
    ranges = []
    if lo <= first - step:
        ranges.append((lo, first - 1))
    if hi >= last + step:
        ranges.append((last + step, hi))
    return ranges


def _frame(rows: list[list], symbol: str) -> pd.DataFrame:
    """ccxt OHLCV rows ``[ms, o, h, l, c, v]`` -> validated candles."""
    if any(len(r) < 6 for r in rows):
        raise DataSourceError(
            f"{symbol}: the exchange answered OHLCV rows with fewer than 6 "
            "fields; expected [time, open, high, low, close, volume]"
        )
    arr = np.array([r[:6] for r in rows], dtype="float64")  # (N, 6); None becomes NaN
    if not np.isfinite(arr[:, 0]).all():
        raise DataSourceError(f"{symbol}: the exchange answered a candle without a timestamp")
    idx = pd.to_datetime(arr[:, 0].astype("int64"), unit="ms", utc=True)
    df = pd.DataFrame(arr[:, 1:], index=pd.DatetimeIndex(idx, name="time"), columns=list(COLUMNS))
    df = df[~df.index.duplicated(keep="last")].sort_index()
    return validate_candles(df, symbol)


class CcxtSource:
    """OHLCV candles of one ccxt exchange, cached under ``cache_dir``.

    ``exchange`` is an already-built ccxt exchange (tests point one at a local fake);
    ``now`` is the clock that decides which bar is still open; ``sleep`` waits between
    retries.
    """

    def __init__(
        self,
        exchange_id: str,
        cfg: CcxtConfig,
        cache_dir: str | Path,
        *,
        exchange: Any = None,
        now: Clock = _utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.exchange_id = exchange_id
        self._cfg = cfg
        self._ex = exchange if exchange is not None else build_exchange(exchange_id, cfg)
        self._ex.enableLastJsonResponse = True  # lets call() tell "no data" from garbage
        self._cache = CandleCache(cache_dir)
        self._now = now
        self._sleep = sleep

    def fetch(
        self,
        symbol: str,
        timeframe: str,
        since: pd.Timestamp | None = None,
        until: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Closed candles with open time in [since, until], from the cache plus the exchange.

        ``since=None`` means from the first bar the exchange has (with a cache, one request
        checks for bars before it); ``until=None`` means up to the newest closed bar.
        Only the missing head and tail are downloaded; the cache is written once, at the end.
        """
        step = timeframe_seconds(timeframe) * 1000  # ConfigError on a malformed timeframe
        start, end = _to_utc(since), _to_utc(until)
        if start is not None and end is not None and start > end:
            raise DataSourceError(
                f"{symbol}: since {start} is after until {end}; ask for since <= until"
            )
        cached = self._cache.read(self.exchange_id, symbol, timeframe)
        newest = _ms(_to_utc(self._now())) - step  # open time of the newest bar closed by now
        hi = newest if end is None else min(_ms(end), newest)
        rows: list[list] = []
        for a, b in _missing(cached, 0 if start is None else _ms(start), hi, step):
            rows += self._download(symbol, timeframe, a, b, step)
        candles = cached
        if rows:
            candles = CandleCache.merge(cached, _frame(rows, symbol))
            self._cache.write(self.exchange_id, symbol, timeframe, candles)
        keep = np.ones(len(candles), dtype=bool)
        if start is not None:
            keep &= candles.index >= start
        if end is not None:
            keep &= candles.index <= end
        return candles[keep]

    def _download(self, symbol: str, timeframe: str, a: int, b: int, step: int) -> list[list]:
        """Rows with open time in [a, b], page by page from ``a``."""
        ex = self._ex
        self.call(
            f"loading the markets of {self.exchange_id} (for {symbol})", ex.load_markets, symbol
        )
        if ex.timeframes and timeframe not in ex.timeframes:
            raise DataSourceError(
                f"{self.exchange_id} has no {timeframe!r} candles; it offers "
                f"{', '.join(ex.timeframes)}; pick one of those for {symbol}"
            )
        rows: list[list] = []
        cursor, pages = a, 0
        while cursor <= b:
            page = self.call(
                f"fetching {symbol} {timeframe} candles from {self.exchange_id} since {_iso(cursor)}",
                functools.partial(
                    ex.fetch_ohlcv, symbol, timeframe, since=cursor, limit=self._cfg.limit
                ),
                symbol,
            )
            pages += 1
            if not page:  # no more data; a short page is not trusted as the end
                break
            last = int(page[-1][0])
            if last < cursor:
                raise DataSourceError(
                    f"{self.exchange_id} answered {symbol} candles older than the requested "
                    f"start {_iso(cursor)}; it ignores 'since', so its history cannot be paged"
                )
            rows += [r for r in page if a <= r[0] <= b]
            cursor = last + step
        logger.info(
            "%s %s %s: %d new candles in %d request(s) for [%s, %s]",
            self.exchange_id,
            symbol,
            timeframe,
            len(rows),
            pages,
            _iso(a),
            _iso(b),
        )
        return rows

    def call(self, what: str, fn: Callable[[], T], symbol: str) -> T:
        """Run one ccxt call with errors translated and temporary ones retried.

        Public so that other users of this exchange (the polling feed) share the mapping.
        """
        ex = self._ex

        def once() -> T:
            ex.last_http_response = ex.last_json_response = None
            try:
                out = fn()
            except ccxt.BaseError as exc:
                raise self._translate(exc, what, symbol) from exc
            body = ex.last_http_response
            if body and ex.last_json_response is None:
                raise TemporaryError(
                    f"{what}: {self.exchange_id} answered malformed JSON: {str(body)[:80]!r}"
                )
            return out

        return retry(
            once,
            attempts=self._cfg.max_retries + 1,
            backoff_s=self._cfg.backoff_s,
            backoff_max_s=self._cfg.backoff_max_s,
            what=what,
            sleep=self._sleep,
        )

    def _translate(self, exc: Exception, what: str, symbol: str) -> DataSourceError:
        kind = type(exc).__name__
        if isinstance(exc, ccxt.BadSymbol):
            close = difflib.get_close_matches(symbol, list(self._ex.symbols or []), n=5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            return DataSourceError(
                f"unknown symbol {symbol!r} on exchange {self.exchange_id}{hint}. The valid "
                "symbols are in exchange.symbols, in ccxt's unified form BASE/QUOTE (e.g. "
                "BTC/USDT); fix the symbol in data.symbols"
            )
        if isinstance(exc, (ccxt.NetworkError, ccxt.BadResponse)):
            return TemporaryError(f"{what}: {kind}: {exc}")
        return DataSourceError(
            f"{what}: {self.exchange_id} refused the request ({kind}: {exc}). This is not "
            "retried; check the symbol, the timeframe and the exchange options (data.ccxt.options)"
        )
