"""Live feeds: closed candles of one symbol, one at a time.

    from pipelines.data.feeds import ReplayFeed, CcxtPollFeed
    feed = ReplayFeed.from_spec(spec, cfg.data, speed=20, start=-200)
    warm_up = feed.history()          # candle frame before the start
    for candle in feed.candles():     # Candle(time (ns), open, high, low, close, volume)
        ...
    feed.stats.to_dict()              # emitted, skipped by rule, gaps, backfilled, ...

Every feed follows :class:`Feed`: ``candles()`` yields each closed candle exactly once, in
time order (``time`` is the bar's open time in ns since the epoch, UTC; ``timestamp`` gives
it as a pandas Timestamp). It is the ``Candle`` live sessions take, so a feed's candles go
to a session as they are. Bad data (NaN,
non-positive price, high below open/close, a repeated or earlier timestamp) is logged,
counted in ``stats.skipped`` under the validator's rule name, and skipped; a gap is
logged and counted (``stats.gaps``, ``stats.missing_bars``), and the ccxt feed backfills
it from the exchange first.

- :class:`ReplayFeed` (``replay.py``): a stored series at ``speed`` candles per second
  (0: as fast as possible), with an injectable clock and sleep, from a start row or time.
- :class:`CcxtPollFeed` (``ccxt_poll.py``): polls an exchange; a candle is emitted only
  once the exchange's answer holds a newer bar (so a stale answer's half-formed bar never
  is); a row opening after the exchange's clock is garbled and skipped (``future-timestamp``);
  ``history(n)`` gives the warm-up bars; ``poll()`` runs one round without sleeping, for a
  host that multiplexes many feeds.

``candles_frame(list_of_candles)`` turns candles back into the candle schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pipelines.data.feeds.base import Candle, FeedStats, candles_frame
from pipelines.data.feeds.ccxt_poll import CcxtPollFeed
from pipelines.data.feeds.replay import ReplayFeed
from pipelines.data.sources import SymbolSpec


class Feed(Protocol):
    """A source of closed candles of one symbol and timeframe (``spec``)."""

    spec: SymbolSpec
    stats: FeedStats

    def candles(self) -> Iterator[Candle]:
        """Each closed candle once, in time order; bad data skipped and counted in ``stats``."""
        ...


__all__ = ["Candle", "CcxtPollFeed", "Feed", "FeedStats", "ReplayFeed", "candles_frame"]
