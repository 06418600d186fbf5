"""Replay: a stored series played as closed candles, at a chosen speed.

``speed`` is candles per second (``20``: one every 50 ms); ``0`` plays as fast as the
consumer takes them. Candle ``k`` (counting emitted candles from 0) is due ``k / speed``
seconds after the first; the feed sleeps until then, against that fixed schedule, so a
slow consumer makes the next candles come at once rather than shifting every later one.
``clock`` and ``sleep`` are injectable, so tests run on a fake clock.

``start`` splits the series: the rows before it are the ``history()`` a session warms up
on, the rows from it are played. It is a row count (``500``: skip the first 500 bars;
``-100``: play the last 100) or a time (play from the first bar opened at or after it).
Bad rows are skipped and counted (``CandleGate``); a gap is reported, and not filled: a
stored series has nothing to fill it from.
"""

from __future__ import annotations

import math
import re
import time as _time
from collections.abc import Callable, Iterator
from typing import TypeAlias

import pandas as pd

from conf.schema import DataConfig
from pipelines.data.candles import normalize_columns, timeframe_seconds, validate_candles
from pipelines.data.feeds.base import Candle, CandleGate, FeedStats
from pipelines.data.sources import SymbolSpec, load_candles
from pipelines.errors import InvalidInputError

Start: TypeAlias = int | str | pd.Timestamp | None


# a row as text: an optional sign and ASCII digits, at most 9 of them ("20240301" is a row, as
# the CLI reads --start 20240301; a compact date must be written 2024-03-01)
_ROW_TEXT = re.compile(r"[+-]?[0-9]{1,9}")


class ReplayFeed:
    """Plays ``candles`` (any frame with o/h/l/c/v columns and a time index) of ``spec``."""

    def __init__(
        self,
        candles: pd.DataFrame,
        spec: SymbolSpec,
        *,
        speed: float = 0.0,
        start: Start = None,
        clock: Callable[[], float] = _time.monotonic,
        sleep: Callable[[float], None] = _time.sleep,
    ) -> None:
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed >= 0):
            raise InvalidInputError(
                f"replay speed {speed!r} is not allowed; use candles per second >= 0 "
                "(e.g. 20), or 0 for as fast as possible"
            )
        timeframe_seconds(spec.timeframe)  # ConfigError on a malformed timeframe
        self.spec = spec
        self.speed = float(speed)
        self.stats = FeedStats()
        self._frame = normalize_columns(candles)
        self._start = self._start_row(start)
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_spec(cls, spec: SymbolSpec, data: DataConfig, **kwargs: object) -> ReplayFeed:
        """Replay what ``load_candles`` returns for ``spec`` (sample, synthetic, cached ccxt)."""
        return cls(load_candles(spec, data), spec, **kwargs)  # type: ignore[arg-type]

    def _start_row(self, start: Start) -> int:
        n = len(self._frame)
        if start is None:
            return 0
        if isinstance(start, int) and not isinstance(start, bool):
            row = start + n if start < 0 else start
            if not 0 <= row <= n:
                raise InvalidInputError(
                    f"replay start {start} is outside the {n} stored bars of {self.spec.key}; "
                    f"use a row in [-{n}, {n}] or a time"
                )
            return row
        if isinstance(start, str) and _ROW_TEXT.fullmatch(start.strip()):
            # a row as text, as the CLI's --start -300 arrives: pandas would read "-300" as
            # the year -300, so numeric text is a row, never a time
            return self._start_row(int(start))
        try:
            ts = pd.Timestamp(start)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"replay start {start!r} is neither a row number nor a time; use e.g. 500, "
                "-100 or 2024-03-01T00:00Z"
            ) from exc
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        if n and ts > self._frame.index[-1]:  # nothing to play: a session finished at once
            first, last = self._frame.index[0].isoformat(), self._frame.index[-1].isoformat()
            raise InvalidInputError(
                f"replay start {ts.isoformat()} is after the data of {self.spec.key}, which "
                f"spans {first} to {last}; give a start in that span, or a row in [-{n}, {n - 1}]"
            )
        return int(self._frame.index.searchsorted(ts, side="left"))

    def history(self) -> pd.DataFrame:
        """The validated rows before the start: what a session warms up on."""
        return validate_candles(self._frame.iloc[: self._start], self.spec.key)

    def __len__(self) -> int:
        """Rows to play (bad ones included, so it bounds the candles emitted)."""
        return len(self._frame) - self._start

    def candles(self) -> Iterator[Candle]:
        """Each good row from the start, once, in order, on the speed's schedule.

        Each call plays the series anew (fresh stats), so two calls yield the same candles.
        """
        self.stats = FeedStats()
        gate = CandleGate(self.spec.key, self.spec.timeframe, self.stats)
        if self._start > 0:
            gate.start_after(self._frame.index[self._start - 1])
        play = self._frame.iloc[self._start :]
        t0: float | None = None
        for stamp, values in zip(play.index, play.to_numpy(dtype="float64"), strict=True):
            candle = gate.admit(stamp, values)
            if candle is None:
                continue
            if self.speed > 0:
                k = self.stats.emitted - 1
                if t0 is None:
                    t0 = self._clock()
                wait = t0 + k / self.speed - self._clock()
                if wait > 0:
                    self._sleep(wait)
            yield candle
