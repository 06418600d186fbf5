"""A session host's training calls: one ``train_batch`` in flight, never waited on.

One call in flight per host, not per model: the queue lives with the sessions that fill it
(a model-wide queue would add an actor hop to every candle), and the ModelActor runs calls
one at a time anyway, so at most ``live.hosts`` calls wait there. A call is submitted only
when none is in flight and never waited on: each ``drive`` looks whether it has answered
(done or failed) or passed its deadline (``ray.call_timeout_s``): a timeout is logged,
counted and journaled, its slot freed, and if the actor answers later the samples move from
dropped to done (``TrainingQueue.late_done``). While the actor is busy (a batch run holds it)
samples wait in the queue; past ``live.queue_capacity`` they are dropped, counted.

Not thread-safe: the host calls it under its own lock.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pipelines.live import Batch, Journal, TrainingQueue

log = logging.getLogger(__name__)

MAX_LATE = 256  # timed-out calls still watched for a late answer


class TrainCalls(Protocol):
    """Submits ``train_batch`` and looks at the answer without waiting (Ray: a ModelClient)."""

    def submit(self, x: Any, y_candle: Any, y_action: Any) -> Any: ...

    def poll(self, handle: Any) -> tuple[str, Any] | None:
        """None while running; ("done", result) or ("failed", exception) once answered."""
        ...


class TrainingDriver:
    """Moves batches from ``queue`` to ``calls`` and their answers back (module doc).

    ``counters`` is the host's dict: ``calls``, ``timeouts``, ``late_answers`` and
    ``failed_calls`` are counted in it.
    """

    def __init__(
        self,
        queue: TrainingQueue,
        calls: TrainCalls,
        journal: Journal,
        timeout_s: float,
        counters: dict[str, int],
        host: int = 0,
    ) -> None:
        self.queue, self.calls, self.journal = queue, calls, journal
        self.timeout_s, self.counters, self.host = timeout_s, counters, host
        self.inflight: tuple[Batch, Any, float] | None = None  # (batch, handle, deadline)
        self.late: dict[int, tuple[Batch, Any]] = {}
        for k in ("calls", "timeouts", "late_answers", "failed_calls"):
            counters.setdefault(k, 0)

    @property
    def busy(self) -> bool:
        """A call in flight or a late answer still watched (the host loop polls sooner)."""
        return self.inflight is not None or bool(self.late)

    def drive(self, now: float) -> None:
        q = self.queue
        if self.inflight is not None:
            batch, handle, deadline = self.inflight
            answer = self.calls.poll(handle)
            if answer is not None:
                self.inflight = None
                self._answered(batch, answer, late=False)
            elif now >= deadline:
                self.inflight = None
                q.timed_out(batch.id)
                self.journal.record_training(batch, "timeout")
                self.counters["timeouts"] += 1
                log.warning(
                    "host %d: train_batch of %d samples passed its %.1fs deadline "
                    "(ray.call_timeout_s); counted as dropped, sessions keep predicting",
                    self.host,
                    len(batch.samples),
                    self.timeout_s,
                )
                self.late[batch.id] = (batch, handle)
                while len(self.late) > MAX_LATE:  # stays dropped: the actor never answered
                    self.late.pop(next(iter(self.late)))
        for bid, (batch, handle) in list(self.late.items()):
            answer = self.calls.poll(handle)
            if answer is not None:
                del self.late[bid]
                if answer[0] == "done":
                    self._answered(batch, answer, late=True)
        if self.inflight is None:
            taken = q.take()
            if taken is not None:
                handle = self.calls.submit(*taken.arrays())
                self.inflight = (taken, handle, now + self.timeout_s)
                self.counters["calls"] += 1

    def _answered(self, batch: Batch, answer: tuple[str, Any], late: bool) -> None:
        kind, value = answer
        if kind == "done":
            if late:
                self.queue.late_done(batch.id, value)
                self.counters["late_answers"] += 1
            else:
                self.queue.done(batch.id, value)
            self.journal.record_training(batch, "late_done" if late else "done", value)
            return
        self.queue.failed(batch.id)
        self.journal.record_training(batch, "failed")
        self.counters["failed_calls"] += 1
        log.warning("host %d: train_batch failed, samples dropped: %s", self.host, value)
