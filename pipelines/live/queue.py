"""The training queue: samples from every session of a model, coalesced into batches.

One queue per model. Sessions ``put`` samples; the host ``take``s a batch (up to
``batch_size`` samples, oldest first) whenever no training call is in flight, sends it to
``ModelActor.train_batch`` and reports the answer. Inference never waits on any of it.

Accounting, per session, is exact at every moment::

    requested = done + dropped + pending        (pending = queued + in flight on time)

* past ``capacity`` queued samples, a new sample is dropped (the newest, so what waits keeps
  its place) and counted;
* a call that fails (bad batch, actor error) or cannot be sent counts its samples as dropped;
* a call past its deadline counts one timeout per session in it and its samples as dropped;
  the actor may still run it (a sync actor finishes what it started), so if its answer
  arrives later ``late_done`` moves them from dropped to done: the count follows the actor's
  own answer, never a guess.

A timed-out call keeps the slot until the actor answers it (``late_done`` / ``late_failed``):
a new batch sent meanwhile would only wait in the busy actor's mailbox behind it, so after
each timeout another batch would pile up there (and here, kept for its late answer). So at
most one call is outstanding and at most one batch held, however long the actor hangs;
samples wait in the queue, and past ``capacity`` are dropped and counted.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import InvalidInputError
from pipelines.model.trainer import loss_trend


@dataclass(frozen=True, slots=True)
class Sample:
    """One training sample: the window ending at bar ``time`` (ns), its next candle and action.

    x (T, F) float32; y_candle (5,) float32; y_action 0/1/2 (HOLD/BUY/SELL). ``reason`` is
    ``pivot``, ``move`` or ``manual``; ``due`` is the bar (ns) at whose close it was queued.
    """

    session_id: str
    time: int
    x: np.ndarray
    y_candle: np.ndarray
    y_action: int
    reason: str
    due: int


@dataclass(frozen=True)
class Batch:
    """What one ``train_batch`` call gets: x (B, T, F), y_candle (B, 5), y_action (B,)."""

    id: int
    samples: tuple[Sample, ...]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.samples
        return (
            np.stack([a.x for a in s]),
            np.stack([a.y_candle for a in s]),
            np.array([a.y_action for a in s], dtype=np.int64),
        )

    def per_session(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.samples:
            out[a.session_id] = out.get(a.session_id, 0) + 1
        return out


@dataclass
class TrainCounts:
    """Training accounting of one session; ``losses`` are of the batches its samples were in."""

    requested: int = 0
    done: int = 0
    dropped: int = 0
    timeouts: int = 0
    last_train_time: float | None = None
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def pending(self) -> int:
        return self.requested - self.done - self.dropped

    def summary(self) -> dict[str, Any]:
        return {
            "train_requested": self.requested,
            "train_done": self.done,
            "train_dropped": self.dropped,
            "train_pending": self.pending,
            "train_timeouts": self.timeouts,
            "last_train_time": self.last_train_time,
            "loss_trend": loss_trend(list(self.losses)),
            "last_loss": self.losses[-1] if self.losses else None,
        }


class TrainingQueue:
    """Bounded, coalescing, one call in flight. Not thread-safe: one host drives it."""

    def __init__(self, capacity: int, batch_size: int, trend_window: int = 20) -> None:
        if capacity < 1 or batch_size < 1:
            raise InvalidInputError(
                f"training queue capacity={capacity} and batch_size={batch_size} must be >= 1 "
                "(live.queue_capacity, train.batch_size)"
            )
        self.capacity, self.batch_size, self.trend_window = capacity, batch_size, trend_window
        self._queue: deque[Sample] = deque()
        self._ids = itertools.count(1)
        self.in_flight: Batch | None = None  # its call has not answered yet (on time or late)
        self.overdue = False  # in_flight passed its deadline: counted as dropped meanwhile
        self.counts: dict[str, TrainCounts] = {}
        self.steps_done = 0  # training calls answered (each one actor step)

    def __len__(self) -> int:
        return len(self._queue)

    def session(self, session_id: str) -> TrainCounts:
        c = self.counts.get(session_id)
        if c is None:
            c = self.counts[session_id] = TrainCounts(losses=deque(maxlen=self.trend_window))
        return c

    def adopt(self, session_id: str, counts: TrainCounts) -> None:
        """Carry on a session's accounting (e.g. ``Journal.restore``'s after a restart)."""
        if counts.pending:
            raise InvalidInputError(
                f"{session_id}: {counts.pending} sample(s) pending in accounting this queue "
                "does not hold; restore it through Journal.restore, which counts them as dropped"
            )
        self.counts[session_id] = counts

    def put(self, samples: list[Sample]) -> int:
        """Queue ``samples``; returns how many were dropped because the queue was full."""
        dropped = 0
        for s in samples:
            c = self.session(s.session_id)
            c.requested += 1
            if len(self._queue) >= self.capacity:
                c.dropped += 1
                dropped += 1
            else:
                self._queue.append(s)
        return dropped

    def take(self) -> Batch | None:
        """The next batch (oldest samples first), or None if a call is outstanding (in flight
        or timed out and not answered yet) or nothing waits."""
        if self.in_flight is not None or not self._queue:
            return None
        n = min(self.batch_size, len(self._queue))
        self.in_flight = Batch(next(self._ids), tuple(self._queue.popleft() for _ in range(n)))
        self.overdue = False
        return self.in_flight

    def _finish(self, batch_id: int, late: bool) -> Batch:
        b = self.in_flight
        if b is None or b.id != batch_id or self.overdue != late:
            state = "none" if b is None else f"{b.id}{' (timed out)' if self.overdue else ''}"
            raise InvalidInputError(
                f"batch {batch_id} is not the one {'timed out' if late else 'in flight'} "
                f"(outstanding: {state}); report each batch exactly once: done/failed/timed_out "
                "while on time, late_done/late_failed after timed_out"
            )
        self.in_flight, self.overdue = None, False
        return b

    def done(self, batch_id: int, result: dict[str, Any], now: float | None = None) -> Batch:
        """The actor trained the batch; ``result`` is its answer (``total_loss`` read)."""
        b = self._finish(batch_id, late=False)
        self._credit(b, result, now)
        return b

    def failed(self, batch_id: int) -> Batch:
        """The call raised, or could not be sent: its samples are dropped (nothing trained)."""
        b = self._finish(batch_id, late=False)
        for sid, n in b.per_session().items():
            self.session(sid).dropped += n
        return b

    def timed_out(self, batch_id: int) -> Batch:
        """The call missed its deadline: a timeout per session in it, its samples dropped
        until ``late_done`` says the actor did train them. The slot stays taken until the
        actor answers (module doc): ``take`` gives nothing meanwhile."""
        b = self.in_flight
        if b is None or b.id != batch_id or self.overdue:
            raise InvalidInputError(
                f"batch {batch_id} is not the one in flight on time "
                f"({None if b is None else b.id}, timed out: {self.overdue}); a call times out once"
            )
        for sid, n in b.per_session().items():
            c = self.session(sid)
            c.dropped += n
            c.timeouts += 1
        self.overdue = True
        return b

    def late_done(self, batch_id: int, result: dict[str, Any], now: float | None = None) -> Batch:
        """A timed-out call's answer arrived after all: its samples move from dropped to done."""
        b = self._finish(batch_id, late=True)
        for sid, n in b.per_session().items():
            self.session(sid).dropped -= n
        self._credit(b, result, now)
        return b

    def late_failed(self, batch_id: int) -> Batch:
        """A timed-out call failed after all: its samples stay dropped; the slot is free."""
        return self._finish(batch_id, late=True)

    def _credit(self, b: Batch, result: dict[str, Any], now: float | None) -> None:
        t = time.time() if now is None else now
        loss = float(result.get("total_loss", float("nan")))
        self.steps_done += 1
        for sid, n in b.per_session().items():
            c = self.session(sid)
            c.done += n
            c.last_train_time = t
            if np.isfinite(loss):
                c.losses.append(loss)

    def drop_session(self, session_id: str) -> int:
        """Drop the queued samples of a session (it was removed); returns how many."""
        keep = [s for s in self._queue if s.session_id != session_id]
        n = len(self._queue) - len(keep)
        self._queue = deque(keep)
        self.session(session_id).dropped += n
        return n
