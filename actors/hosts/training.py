"""A session host's training calls: one ``train_batch`` outstanding, never waited on.

One call in flight per host, not per model: the queue lives with the sessions that fill it
(a model-wide queue would add an actor hop to every candle), and the ModelActor runs calls
one at a time anyway, so at most ``live.hosts`` calls wait there. A call is submitted only
when none is outstanding and never waited on: each ``drive`` looks whether it has answered
(done or failed) or passed its deadline (``ray.call_timeout_s``). A timeout is logged,
counted and journaled (its samples count as dropped), and the call stays watched: no other
batch is sent while the actor may still be running it, since a new call would only queue
behind it in the actor's mailbox (one per timeout, each holding its batch, all run later).
When the actor answers, the samples move from dropped to done (``TrainingQueue.late_done``),
or stay dropped if it failed, and the next batch goes. A hung actor therefore costs one
outstanding call and one batch, never more (``MAX_LATE``); an actor that dies or restarts
fails its pending calls (Ray), which frees the slot. A batch that cannot even be sent
(``submit`` raises, e.g. the object store is full) is counted as a failed call, its samples
dropped, and the next batch is tried on the next step. While the actor is busy (a batch run
holds it) samples wait in the queue; past ``live.queue_capacity`` they are dropped, counted.

Every outcome is journaled (``train_result``), and a write that does not commit (disk full,
the file locked) loses none: the driver keeps the records and writes them first on the next
``drive`` (and the host's clean end carries them, ``take_unwritten``). A result lost would make
a restarted host count its samples as dropped although the model trained on them.

Not thread-safe: the host calls it under its own lock.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pipelines.errors import JournalError
from pipelines.live import Batch, Journal, TrainingQueue
from pipelines.live.journal import training_records
from pipelines.live.session import Record

log = logging.getLogger(__name__)

MAX_LATE = 1  # timed-out calls watched for a late answer: the one outstanding call (module doc)


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
        # the outstanding call, on time or timed out (queue.overdue): (batch, handle, deadline)
        self.inflight: tuple[Batch, Any, float] | None = None
        # training results a journal write did not take, oldest first (module doc)
        self.unwritten: list[tuple[str, list[Record]]] = []
        for k in ("calls", "timeouts", "late_answers", "failed_calls"):
            counters.setdefault(k, 0)

    @property
    def busy(self) -> bool:
        """A call in flight within its deadline (the host loop polls sooner); a timed-out one
        is looked at on the loop's own pace, its answer being no longer awaited."""
        return self.inflight is not None and not self.queue.overdue

    def drive(self, now: float) -> None:
        self.flush()
        if self.inflight is not None:
            batch, handle, deadline = self.inflight
            answer = self.calls.poll(handle)
            if answer is not None:
                self.inflight = None
                self._answered(batch, answer, late=self.queue.overdue)
            elif not self.queue.overdue and now >= deadline:
                self._timed_out(batch)
        if self.inflight is None:
            self._submit(now)

    def _submit(self, now: float) -> None:
        taken = self.queue.take()
        if taken is None:
            return
        try:
            handle = self.calls.submit(*taken.arrays())
        except Exception as exc:  # whatever the cause, the batch was not sent: drop, go on
            self.queue.failed(taken.id)
            self._journal(taken, "failed")
            self.counters["failed_calls"] += 1
            log.warning(
                "host %d: could not send train_batch of %d samples (%s: %s); counted as "
                "dropped, the next batch is sent on the next step",
                self.host,
                len(taken.samples),
                type(exc).__name__,
                exc,
            )
            return
        self.inflight = (taken, handle, now + self.timeout_s)
        self.counters["calls"] += 1

    def _timed_out(self, batch: Batch) -> None:
        self.queue.timed_out(batch.id)
        self._journal(batch, "timeout")
        self.counters["timeouts"] += 1
        log.warning(
            "host %d: train_batch of %d samples passed its %.1fs deadline "
            "(ray.call_timeout_s); counted as dropped, sessions keep predicting; no other "
            "batch is sent until the actor answers this one",
            self.host,
            len(batch.samples),
            self.timeout_s,
        )

    def _answered(self, batch: Batch, answer: tuple[str, Any], late: bool) -> None:
        kind, value = answer
        if kind == "done":
            if late:
                self.queue.late_done(batch.id, value)
                self.counters["late_answers"] += 1
            else:
                self.queue.done(batch.id, value)
            self._journal(batch, "late_done" if late else "done", value)
            return
        if late:  # counted as dropped at its timeout already; only the slot is freed
            self.queue.late_failed(batch.id)
            log.warning("host %d: a timed-out train_batch failed after all: %s", self.host, value)
            return
        self.queue.failed(batch.id)
        self._journal(batch, "failed")
        self.counters["failed_calls"] += 1
        log.warning("host %d: train_batch failed, samples dropped: %s", self.host, value)

    # -- journaling ------------------------------------------------------------------------
    def _journal(self, batch: Batch, outcome: str, result: Any = None) -> None:
        self.unwritten.extend(training_records(batch, outcome, result))
        self.flush()

    def flush(self) -> bool:
        """Write the results not journaled yet, in one transaction; True once none is left.
        A write that fails keeps them all for the next call (module doc): it is logged, not
        raised, so training goes on and the sessions' own writes say the journal is failing."""
        if not self.unwritten:
            return True
        try:
            self.journal.write(self.unwritten)
        except JournalError as exc:
            log.warning(
                "host %d: %d training result(s) not journaled yet, kept for the next write: %s",
                self.host,
                len(self.unwritten),
                exc,
            )
            return False
        self.unwritten = []
        return True

    def take_unwritten(self) -> list[tuple[str, list[Record]]]:
        """The results not journaled yet, handed to a caller whose write carries them (the
        host's clean end); they are no longer kept here."""
        out, self.unwritten = self.unwritten, []
        return out
