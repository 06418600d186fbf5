"""What every feed shares: its ``FeedStats`` and the gate that checks each candle before it
is emitted (as a ``pipelines.data.candles.Candle``, the one candle type of feeds and live
sessions)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.candles import COLUMNS, Candle, check_values, timeframe_seconds
from pipelines.errors import CandleValidationError

logger = logging.getLogger(__name__)


def candles_frame(candles: Sequence[Candle]) -> pd.DataFrame:
    """Candles as the project's candle schema (UTC index named ``time``, float64 o/h/l/c/v)."""
    times = np.array([c.time for c in candles], dtype=np.int64).view("M8[ns]")
    # microseconds, the unit pandas (and so every source) gives a candle index
    idx = pd.DatetimeIndex(times, name="time").tz_localize("UTC").as_unit("us")
    vals = np.array([c.values() for c in candles], dtype="float64").reshape(-1, len(COLUMNS))
    return pd.DataFrame(vals, index=idx, columns=list(COLUMNS))


@dataclass
class FeedStats:
    """What a feed did: candles emitted, bad ones skipped (by the validator rule that failed),
    gaps reported, bars backfilled, answers repeated, polls made."""

    emitted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # rule -> count
    gaps: int = 0  # holes reported in the emitted sequence
    missing_bars: int = 0  # bars in those holes (never found, so never emitted)
    backfilled: int = 0  # candles recovered by a backfill request (ccxt)
    repeated: int = 0  # rows the exchange answered again after they were emitted (ccxt)
    polls: int = 0  # polling rounds (ccxt)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skipped_total": self.skipped_total}


class CandleGate:
    """Admits candles one at a time in order; reports and skips bad ones; reports gaps.

    A candle is skipped, logged and counted under the rule it breaks: the validator's value
    rules (``finite``, ``positive-price``, ``high-covers-open-close``, ...) on the candle
    alone, ``unique-timestamps`` for a repeat of the last emitted time and
    ``sorted-timestamps`` for an earlier one. A candle more than one bar after the last one
    seen (emitted or skipped for its values) is emitted after reporting the gap before it.
    """

    def __init__(self, label: str, timeframe: str, stats: FeedStats) -> None:
        self.label = label
        self.step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
        self.stats = stats
        self.last: pd.Timestamp | None = None  # open time of the last emitted candle
        self.seen: pd.Timestamp | None = None  # ... of the last one emitted or skipped for values

    def start_after(self, time: pd.Timestamp) -> None:
        """Treat ``time`` as already emitted (the end of the history a session starts from)."""
        self.last = self.seen = time

    def skip(self, time: pd.Timestamp, rule: str, what: str) -> None:
        """Report a bad candle: logged, counted under ``rule``; it is not emitted."""
        self.stats.skipped[rule] = self.stats.skipped.get(rule, 0) + 1
        logger.warning("%s: candle %s skipped, rule '%s': %s", self.label, time, rule, what)

    def admit(self, time: pd.Timestamp, values: Sequence[float]) -> Candle | None:
        """The candle if it may be emitted (and it is then counted as emitted), else None."""
        if self.last is not None and time <= self.last:
            rule = "unique-timestamps" if time == self.last else "sorted-timestamps"
            self.skip(time, rule, f"the last emitted candle opened at {self.last}")
            return None
        row = np.asarray(values, dtype="float64")  # an exchange's null becomes NaN: rule 'finite'
        candle = Candle.at(time, *row)
        try:
            check_values(np.array([candle.time]), row[None, :], self.label)
        except CandleValidationError as exc:
            self.skip(time, exc.rule, str(exc))
            self.seen = time if self.seen is None else max(self.seen, time)
            return None
        if self.seen is not None and time - self.seen > self.step:
            missing = int((time - self.seen) / self.step) - 1
            self.stats.gaps += 1
            self.stats.missing_bars += missing
            logger.warning(
                "%s: gap of %d bar(s) between %s and %s", self.label, missing, self.seen, time
            )
        self.last = self.seen = time
        self.stats.emitted += 1
        return candle
