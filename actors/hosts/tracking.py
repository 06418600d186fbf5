"""A session host's MLflow runs: the host buffers, a writer actor in another process writes.

Sessions' metrics go to experiment ``<run.name>-live``, one run per session (named by the
session id, tagged ``candleray.session``), metrics by candle (step = candles the session has
taken); a stopped session's run ends on its final figures.

Why two processes: MLflow's client (SQLAlchemy, HTTP) is Python that holds the GIL for
milliseconds per call. A writer thread inside the host took that GIL from the host's loop
(candle -> prediction p50 3.5 ms -> 34 ms, bench/RESULTS.md). So the host's side
(``SessionRuns``) only appends rows to a list under a lock; its sender thread hands them off
in batches, one non-blocking call per ``interval_s`` (or sooner past ``batch_rows``), with at
most one call in flight. The writer (``actors.hosts.runs_writer``: a Ray actor of 0 CPUs
named ``<host name>-mlflow``, owned by the host) does one ``log_batch`` per run per batch. A slow store only makes batches bigger; a failing store, a dead writer or rows
dropped from a full buffer are counted in ``status()`` (the host's stats), never raised.

Each batch carries the run ids the host knows for its sessions, so a writer that is new (the
host restarted and passes the run ids it journaled to ``resume``, or the writer died and was
recreated) resumes a session's run instead of starting another.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

SESSION_TAG = "candleray.session"
# the summary fields logged per candle (numbers only; NaN ones are skipped)
LOGGED = (
    "direction_acc",
    "direction_acc_rolling",
    "mae_pct_close",
    "mae_vol_close",
    "paper_pnl",
    "equity",
    "trades",
    "win_rate",
    "predictions",
    "settled",
    "train_done",
    "train_dropped",
    "train_timeouts",
    "weights_version",
)
INTERVAL_S = 1.0  # one hand-off per second at most, unless a batch fills first
BATCH_ROWS = 5_000  # rows that make a hand-off due before the interval ends
MAX_BUFFERED = 100_000  # rows held while the writer is behind; past this the oldest are dropped
_POLL_S = 0.05  # how often the sender looks at its call in flight

Row = tuple[str, int, dict[str, float]]  # (session id, step = candles taken, metrics)


def loggable(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k in LOGGED:
        v = summary.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


@dataclass(frozen=True)
class Batch:
    """One hand-off: rows in order, then the runs to end; ``runs``: the run ids known to the
    host for the sessions in it (the writer resumes those it has not opened yet)."""

    rows: list[Row]
    ends: list[tuple[str, str]]  # (session id, end status)
    runs: dict[str, str]


# -- how a batch reaches the writer (actors.hosts.runs_writer) ---------------------------------------------------
class RunsSink(Protocol):
    def submit(self, batch: Batch) -> Any:
        """Start writing ``batch`` and return a handle at once."""

    def poll(self, handle: Any) -> tuple[str, Any] | None:
        """None while it runs; then ("done", the writer's answer) or ("failed", the error)."""


# -- the host's side -----------------------------------------------------------------------------
class SessionRuns:
    """What the host calls (``log``, ``end``, ``resume``, ``flush``); each only appends under a
    lock. A sender thread hands the rows to ``sink`` (module doc)."""

    def __init__(
        self,
        sink: RunsSink,
        *,
        interval_s: float = INTERVAL_S,
        batch_rows: int = BATCH_ROWS,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.sink, self.interval_s, self.batch_rows = sink, interval_s, batch_rows
        self.max_buffered = max_buffered
        self._cv = threading.Condition()
        self._rows: collections.deque[Row] = collections.deque()
        self._ends: list[tuple[str, str]] = []
        self._inflight: tuple[Any, Batch, float] | None = None  # (handle, batch, sent at)
        # a batch taken from the buffer whose submit has not returned: not in flight yet, but
        # not written either (flush must not see it drained)
        self._sending = False
        self._flushing = 0  # flush() calls waiting: send now, not at the interval
        self._logged: dict[str, dict[str, float]] = {}  # last values queued, by the host's thread
        self.run_ids: dict[str, str] = {}  # session -> run id (resumed or reported by the writer)
        self.counts = {"batches": 0, "rows": 0, "store_errors": 0, "writer_failures": 0}
        self.counts.update(dropped=0, lost=0)
        self.last_error = ""
        self._stopped = False
        threading.Thread(target=self._run, name="live-mlflow-send", daemon=True).start()

    # -- called by the host (cheap) ---------------------------------------------------------
    def resume(self, session_id: str, run_id: str) -> None:
        with self._cv:
            self.run_ids[session_id] = run_id

    def log(
        self, session_id: str, step: int, metrics: dict[str, float], only_changed: bool = False
    ) -> None:
        """Queue ``metrics`` at ``step``; ``only_changed``: just those whose value differs from
        the last logged (a final update at a step already logged adds no repeated points)."""
        last = self._logged.setdefault(session_id, {})
        if only_changed:
            metrics = {k: v for k, v in metrics.items() if last.get(k) != v}
            if not metrics:
                return
        last.update(metrics)
        with self._cv:
            self._rows.append((session_id, step, metrics))
            if len(self._rows) > self.max_buffered:
                self._rows.popleft()
                self.counts["dropped"] += 1
            if len(self._rows) == self.batch_rows:  # just filled: hand it off now
                self._cv.notify_all()

    def end(self, session_id: str, status: str = "FINISHED") -> None:
        self._logged.pop(session_id, None)
        with self._cv:
            self._ends.append((session_id, status))

    def flush(self, timeout_s: float) -> bool:
        """Hand off everything now and wait at most ``timeout_s`` for the writer to answer;
        True if all was written (or failed and was counted), False if still pending."""
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()
            try:
                return self._cv.wait_for(self._drained, timeout_s)
            finally:
                self._flushing -= 1

    def close(self, timeout_s: float) -> bool:
        """``flush``, then stop the sender thread; what ``flush`` answered."""
        done = self.flush(timeout_s)
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        return done

    @property
    def errors(self) -> int:
        """Failed store operations, failed hand-offs and rows dropped or lost: 0 when every
        metric reached MLflow."""
        c = self.counts
        return c["store_errors"] + c["writer_failures"] + c["dropped"] + c["lost"]

    def status(self) -> dict[str, Any]:
        with self._cv:
            inflight = self._inflight
            return {
                **self.counts,
                "errors": self.errors,
                "buffered": len(self._rows),
                "in_flight_s": None if inflight is None else time.monotonic() - inflight[2],
                "last_error": self.last_error,
            }

    # -- the sender thread -------------------------------------------------------------------
    def _urgent(self) -> bool:
        """A hand-off is due before the interval ends: a flush waits, or a batch is full."""
        has = bool(self._rows or self._ends)
        return (self._flushing > 0 and has) or len(self._rows) >= self.batch_rows

    def _drained(self) -> bool:
        return not self._rows and not self._ends and self._inflight is None and not self._sending

    def _run(self) -> None:
        next_send = time.monotonic() + self.interval_s
        while not self._stopped:
            batch = None
            with self._cv:
                if self._inflight is not None:
                    self._cv.wait(_POLL_S)
                else:
                    self._cv.wait_for(self._urgent, max(next_send - time.monotonic(), 0.0))
            try:
                if self._inflight is not None and not self._answered():
                    continue
                with self._cv:
                    now = time.monotonic()
                    if not self._urgent() and not (now >= next_send and (self._rows or self._ends)):
                        if now >= next_send:  # nothing to send this interval
                            next_send = now + self.interval_s
                        continue
                    batch = self._take()
                    self._sending = True
                next_send = time.monotonic() + self.interval_s
                handle = self.sink.submit(batch)  # outside the lock: the host never waits on it
                with self._cv:
                    self._inflight = (handle, batch, time.monotonic())
                    self._sending = False
                    self._cv.notify_all()
            except Exception as exc:  # a bug or a carrier error must not end the sender
                with self._cv:
                    self._failed(f"hand-off: {exc}")
                    if batch is not None and self._inflight is None:
                        self._requeue(batch)
                    self._inflight = None
                    self._sending = False
                    self._cv.notify_all()
                log.exception("live MLflow hand-off failed")
                time.sleep(self.interval_s)

    def _take(self) -> Batch:
        rows, ends = list(self._rows), self._ends
        self._rows.clear()
        self._ends = []
        sids = {r[0] for r in rows} | {s for s, _ in ends}
        return Batch(rows, ends, {s: self.run_ids[s] for s in sids if s in self.run_ids})

    def _answered(self) -> bool:
        """Look at the call in flight once; False while it is still running."""
        assert self._inflight is not None
        handle, batch, _ = self._inflight
        got = self.sink.poll(handle)
        if got is None:
            return False
        kind, answer = got
        with self._cv:
            self._inflight = None
            self.counts["batches"] += 1
            if kind == "done":
                self.run_ids.update(answer["run_ids"])
                self.counts["rows"] += len(batch.rows) - answer["lost"]
                self.counts["store_errors"] += answer["errors"]
                self.counts["lost"] += answer["lost"]
                if answer["last_error"]:
                    self.last_error = answer["last_error"]
            else:  # the writer died or refused the call: its batch goes back, first in line
                self._failed(f"writer: {answer}")
                self._requeue(batch)
            self._cv.notify_all()
        return True

    def _requeue(self, batch: Batch) -> None:
        self._rows.extendleft(reversed(batch.rows))
        self._ends[:0] = batch.ends
        while len(self._rows) > self.max_buffered:
            self._rows.popleft()
            self.counts["dropped"] += 1

    def _failed(self, why: str) -> None:
        self.counts["writer_failures"] += 1
        self.last_error = why
        log.warning("live MLflow %s", why)
