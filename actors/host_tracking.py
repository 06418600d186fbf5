"""A session host's MLflow writer: one run per session, all written by one thread.

Sessions' metrics go to experiment ``<run.name>-live``, one run per session (named by the
session id, tagged ``candleray.session``), metrics by candle (step = candles the session has
taken). One thread per host owns every ``Tracker`` of its sessions, so the store sees one
writer per host and the host's loop never waits on MLflow: ``log`` only queues. A failing
store is counted and logged, never raised into the loop (as ``actors.tracking_writer``).

A restarted host passes the run ids it journaled (``resume``), so a session's run goes on
where it was instead of a new one starting.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

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


def loggable(summary: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k in LOGGED:
        v = summary.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class SessionRuns:
    """The writer thread. ``factory(run_name, run_id)`` -> a Tracker (tests may pass a fake)."""

    def __init__(self, uri: str, experiment: str, factory: Callable[..., Any] | None = None):
        self.uri, self.experiment = uri, experiment
        self._factory = factory
        self._q: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._trackers: dict[str, Any] = {}
        self._resume: dict[str, str] = {}
        self._logged: dict[str, dict[str, float]] = {}  # last values queued, by the caller's thread
        self.run_ids: dict[str, str] = {}  # session -> run id, once open (read by the host)
        self.errors = 0
        self.last_error = ""
        self._idle = threading.Event()
        self._idle.set()
        threading.Thread(target=self._run, name="live-mlflow", daemon=True).start()

    def resume(self, session_id: str, run_id: str) -> None:
        self._resume[session_id] = run_id

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
        self._idle.clear()
        self._q.put(("log", session_id, (step, metrics)))

    def end(self, session_id: str, status: str = "FINISHED") -> None:
        self._logged.pop(session_id, None)
        self._idle.clear()
        self._q.put(("end", session_id, status))

    def flush(self, timeout_s: float) -> bool:
        """Queue a flush of every run and wait at most ``timeout_s``; True if all was written."""
        self._idle.clear()
        self._q.put(("flush", "", None))
        return self._idle.wait(timeout_s)

    def _tracker(self, sid: str) -> Any:
        t = self._trackers.get(sid)
        if t is None:
            factory = self._factory
            if factory is None:
                from pipelines.tracking.tracker import Tracker

                def factory(run_name: str, run_id: str | None) -> Any:
                    return Tracker(
                        self.uri,
                        self.experiment,
                        run_name=run_name,
                        run_id=run_id,
                        tags={SESSION_TAG: run_name},
                        log_every_steps=20,
                    )

            t = self._trackers[sid] = factory(sid, self._resume.get(sid))
            self.run_ids[sid] = t.run_id
        return t

    def _run(self) -> None:
        while True:
            kind, sid, arg = self._q.get()
            try:
                if kind == "log":
                    self._tracker(sid).log_metrics(arg[1], arg[0])
                elif kind == "end" and sid in self._trackers:
                    self._trackers.pop(sid).close(arg)
                elif kind == "flush":
                    for t in self._trackers.values():
                        t.flush()
            except Exception as exc:  # a failing store must not stop the host: count it
                self.errors += 1
                self.last_error = f"{kind} {sid}: {exc}"
                log.warning("live MLflow %s for %s failed: %s", kind, sid, exc)
            if self._q.empty():
                self._idle.set()
