"""A session host's feeds: many feeds multiplexed by one loop, none of them sleeping.

A host pulls from every session's feed on each pass of its loop, so a feed here never
sleeps: it answers ``due(now)`` with the candles that have arrived by ``now`` (the host's
monotonic clock) and ``next_due()`` with when the next one will.

* ``ReplaySource``: ``pipelines.data.feeds.ReplayFeed`` played at ``speed`` candles per second
  against a fixed schedule (candle k is due at t0 + k / speed); ``speed=0``: one candle per
  pass of the loop, as fast as the host predicts. Its arrival time is the scheduled time, so a
  host that falls behind shows it as latency, not as a slower replay.
* ``PollSource``: ``pipelines.data.feeds.CcxtPollFeed.poll()`` once per poll interval, on a
  thread of its own: a round (requests, retries, backoff) may take seconds, and the host's
  lock is never held for it, so a slow or failing exchange delays only its own sessions'
  candles, never another session's prediction. Finished rounds wait in a queue that ``due``
  drains; the arrival time is when the round answered. A failed round is logged and counted;
  the next round starts from the last candle handled, so nothing is lost. ``close()`` (the
  session stopped or finished) ends the thread after the round under way and drops what
  waits undrained: a finished session neither spends the exchange's rate limit nor buffers.

Both yield ``pipelines.live.Candle`` (open time in ns), what sessions take.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from conf import Config
from pipelines.data.candles import normalize_columns
from pipelines.data.feeds import CcxtPollFeed, ReplayFeed
from pipelines.data.sources import SymbolSpec, load_candles
from pipelines.data.sources.ccxt_source import build_exchange
from pipelines.errors import CandlerayError, InvalidInputError
from pipelines.live import Candle, LivePrediction, Session, iter_candles
from pipelines.live.history import history_capacity

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("replay", "ccxt")

Arrival = tuple[Candle, float]  # the candle and when it arrived (host monotonic seconds)


@dataclass(frozen=True)
class FeedPlan:
    """How a session gets candles (journaled, so a restarted host rebuilds the same feed)."""

    source: str  # replay | ccxt
    speed: float = 0.0  # replay: candles per second (0: as fast as the host predicts)
    start: int | str | None = None  # replay: row or time to play from (ReplayFeed's ``start``)
    # the session takes this many candles, then is finished (None: until its feed ends); a
    # poll that brings more leaves the rest untaken
    max_candles: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "speed": self.speed,
            "start": self.start,
            "max_candles": self.max_candles,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeedPlan:
        # journals written before max_candles existed have no such key: no limit
        return cls(d["source"], d["speed"], d["start"], d.get("max_candles"))

    @classmethod
    def checked(
        cls,
        source: str,
        speed: float | None,
        start: int | str | None,
        max_candles: int | None = None,
    ) -> FeedPlan:
        if source not in SOURCES:
            raise InvalidInputError(
                f"feed source {source!r} is not known; choose one of {list(SOURCES)} "
                "(replay: a stored series; ccxt: poll an exchange)"
            )
        s = 0.0 if speed is None else float(speed)
        if not s >= 0:
            raise InvalidInputError(f"replay speed {speed!r} must be >= 0 candles per second")
        if max_candles is not None and not (isinstance(max_candles, int) and max_candles >= 1):
            raise InvalidInputError(
                f"max_candles {max_candles!r} must be a whole number >= 1, or None for no limit"
            )
        return cls(source, s, start, max_candles)


class ReplaySource:
    """Rows of a stored series from the feed's start. Each row is checked by the session that
    takes it (``pipelines.live.history.check_candle``: bad ones skipped and counted there), not
    a second time here: the feed's per-row gate costs more than the session's whole step."""

    def __init__(self, frame: pd.DataFrame, speed: float, now: float) -> None:
        self.speed, self.t0 = speed, now
        self._it: Iterator[Candle] = iter_candles(frame)
        self._next: Candle | None = None
        self._k = 0
        self.exhausted = False
        self.paced = speed > 0  # on a schedule (else: one candle per host step)
        self.errors = 0
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._it, None)
        self.exhausted = self._next is None

    def next_due(self) -> float | None:
        if self._next is None:
            return None
        return self.t0 + self._k / self.speed if self.speed > 0 else self.t0

    def due(self, now: float, limit: int) -> list[Arrival]:
        out: list[Arrival] = []
        while self._next is not None and len(out) < limit:
            at = self.next_due()
            assert at is not None
            if at > now:
                break
            out.append((self._next, at if self.speed > 0 else now))
            self._k += 1
            self._advance()
        return out

    def close(self) -> None:
        """Nothing to stop: a replay has no thread."""


class PollSource:
    """Polls ``feed`` on its own thread (module doc); ``due`` only takes what has arrived.

    ``wake`` is called after each round that brought candles, so a host loop sleeping until
    its next due candle takes them at once (an exchange's arrivals cannot be scheduled).
    """

    def __init__(
        self,
        feed: CcxtPollFeed,
        clock: Callable[[], float],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.feed, self.clock = feed, clock
        self._wake = wake
        self._arrived: deque[Arrival] = deque()  # appended by the poller, popped by ``due``
        self._mu = threading.Lock()  # guards ``_arrived`` only; never held for a request
        self._stop = threading.Event()
        self.exhausted = False  # an exchange never runs out
        self.paced = True
        self.errors = 0  # failed rounds (written by the poller thread only)
        self._thread = threading.Thread(target=self._run, name=f"poll-{feed.spec.key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self.clock()
            try:
                got = self.feed.poll()
            except CandlerayError as exc:  # retries ran out: the next round resumes
                self.errors += 1
                log.warning("%s: polling failed, retried next round: %s", self.feed.spec.key, exc)
                got = []
            except Exception:  # a bug in one round must not end the session's polling for good
                self.errors += 1
                log.exception("%s: a polling round failed, retried next round", self.feed.spec.key)
                got = []
            if got:
                at = self.clock()
                with self._mu:  # checked under the lock ``close`` clears under: none kept after
                    if self._stop.is_set():
                        break
                    self._arrived.extend((c, at) for c in got)
                if self._wake is not None:
                    self._wake()
            self._stop.wait(max(0.0, began + self.feed.poll_interval_s - self.clock()))

    def next_due(self) -> float | None:
        """When the oldest waiting candle arrived; None while none waits (``wake`` says when)."""
        with self._mu:
            return self._arrived[0][1] if self._arrived else None

    def due(self, now: float, limit: int) -> list[Arrival]:
        with self._mu:
            return [self._arrived.popleft() for _ in range(min(limit, len(self._arrived)))]

    @property
    def polling(self) -> bool:
        """True until the poller thread has ended (after ``close``, once its round is done)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop polling and drop the waiting candles. Never waits: a round under way (it may
        take seconds) finishes on its own thread, and its candles are dropped."""
        with self._mu:
            self._stop.set()
            self._arrived.clear()


@dataclass
class Hosted:
    """A session, where its candles come from, and what the host last published for it."""

    session: Session
    plan: FeedPlan
    source: ReplaySource | PollSource
    last: LivePrediction | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Its feed ended, or it took the candles it was started for (it takes no more)."""
        cap = self.plan.max_candles
        return self.source.exhausted or (cap is not None and self.session.metrics.candles >= cap)

    def close_if_finished(self) -> bool:
        """Stop the feed of a finished session (its poller, its buffer); True if finished.
        The session itself stays, for its status, until it is stopped."""
        if self.finished:
            self.source.close()
        return self.finished


def open_source(
    cfg: Config,
    spec: SymbolSpec,
    plan: FeedPlan,
    clock: Callable[[], float],
    after: int | None,
    exchange: Any = None,
    wake: Callable[[], None] | None = None,
) -> tuple[ReplaySource | PollSource, list[Candle]]:
    """The session's source and the warm-up candles before it (empty when resuming): a
    replay's rows before its start, or an exchange's newest closed bars before now.

    ``after``: open time (ns) of the last candle the session already processed (from the
    journal); the source yields only later ones. ``clock``: the host's monotonic clock;
    ``wake``: what a poll source calls when candles arrived (``PollSource``).
    """
    if plan.source == "replay":
        frame = normalize_columns(load_candles(spec, cfg.data))
        start: Any = plan.start
        if after is not None:  # the row after the last candle processed (an exact bar time)
            start = int(frame.index.searchsorted(pd.Timestamp(after, tz="UTC"), side="right"))
        feed = ReplayFeed(frame, spec, speed=0, start=start)  # checks start, finds its row
        play = frame.iloc[len(frame) - len(feed) :]
        history = [] if after is not None else list(iter_candles(feed.history()))
        return ReplaySource(play, plan.speed, clock()), history
    ex = exchange if exchange is not None else build_exchange(spec.source, cfg.data.ccxt)
    poll = CcxtPollFeed(
        spec.source,
        spec.symbol,
        spec.timeframe,
        cfg.data.ccxt,
        exchange=ex,
        cache_dir=cfg.data.cache_dir,
        after=None if after is None else pd.Timestamp(after, tz="UTC"),
    )
    warm: list[Candle] = []
    if after is None:  # a new session: warm up on the closed bars before now, as a replay does
        cap = history_capacity(
            cfg.features.window, cfg.labels.pivot_bars, spec.timeframe, cfg.data.extra_timeframes
        )
        warm = list(iter_candles(poll.history(cap)))  # polling starts after them
    return PollSource(poll, clock, wake), warm
