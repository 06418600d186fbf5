"""A session host's MLflow hand-off without Ray: batches, failures counted, never blocking."""

from __future__ import annotations

import itertools
import threading
import time

from actors.hosts.runs_writer import LocalRunsSink, RunsWriter
from actors.hosts.tracking import Batch, SessionRuns
from pipelines.errors import TrackingError


class FakeTracker:
    """Records what a Tracker was asked to do; ``fail`` makes every flush fail."""

    ids = itertools.count(1)

    def __init__(self, store: dict, run_name: str, run_id: str | None, fail: bool = False):
        self.run_id = run_id or f"run{next(self.ids)}"
        self.run_name, self.fail = run_name, fail
        self.rows: list[tuple[int, dict]] = []
        self.flushes = 0
        self.ended: str | None = None
        store.setdefault(run_name, []).append(self)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((step, metrics))

    def flush(self) -> None:
        self.flushes += 1
        if self.fail:
            raise TrackingError("MLflow log metrics failed at sqlite:///x.db: database is locked")

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.ended = status


def runs_with(store: dict, fail: bool = False, **kw) -> SessionRuns:
    def factory(name: str, run_id: str | None) -> FakeTracker:
        return FakeTracker(store, name, run_id, fail)

    return SessionRuns(LocalRunsSink(RunsWriter("sqlite:///x.db", "e-live", factory)), **kw)


def test_one_log_batch_per_run_per_handoff_and_runs_resumed_by_id():
    store: dict = {}
    runs = runs_with(store, interval_s=60.0)  # nothing leaves before the flush
    for step in range(1, 51):
        for sid in ("a", "b", "c"):
            runs.log(sid, step, {"predictions": float(step)})
    assert store == {}  # logging only buffered
    runs.log("a", 50, {"predictions": 50.0, "train_done": 3.0}, only_changed=True)
    runs.end("a")
    assert runs.flush(120.0)
    for sid in ("a", "b", "c"):
        (t,) = store[sid]
        assert [s for s, _ in t.rows[:50]] == list(range(1, 51))
        assert t.flushes == 1 + (sid == "a")  # one write for 50 candles (+ the end's)
    assert store["a"][0].rows[-1] == (50, {"train_done": 3.0})  # only what changed
    assert store["a"][0].ended == "FINISHED" and store["b"][0].ended is None
    assert runs.status()["errors"] == 0 and runs.status()["rows"] == 151
    ids = dict(runs.run_ids)
    runs.close(120.0)

    # a restarted host: a new writer resumes the journaled runs instead of opening new ones
    again = runs_with(store, interval_s=60.0)
    again.resume("b", ids["b"])
    again.log("b", 51, {"predictions": 51.0})
    assert again.flush(120.0)
    assert store["b"][1].run_id == ids["b"] and again.run_ids["b"] == ids["b"]
    again.close(120.0)


def test_a_failing_store_is_counted_and_reported_never_raised():
    store: dict = {}
    runs = runs_with(store, fail=True, interval_s=60.0)
    for step in range(1, 11):
        runs.log("a", step, {"predictions": float(step)})  # never raises
    runs.end("a")
    assert runs.flush(120.0)
    st = runs.status()
    assert st["store_errors"] == 2 and runs.errors == 2  # the log and the end
    assert "database is locked" in st["last_error"]
    runs.close(120.0)


class StuckSink:
    """A writer that never answers (a hung store)."""

    def __init__(self) -> None:
        self.sent: list[Batch] = []

    def submit(self, batch: Batch) -> object:
        self.sent.append(batch)
        return object()

    def poll(self, handle: object) -> None:
        return None


def test_a_writer_that_never_answers_does_not_slow_logging_and_drops_are_counted():
    sink = StuckSink()
    runs = SessionRuns(sink, interval_s=0.01, max_buffered=1000)
    runs.log("a", 0, {"x": 0.0})
    deadline = time.monotonic() + 60  # generous: a loaded machine may be slow to start it
    while not sink.sent and time.monotonic() < deadline:  # the first batch is in flight
        time.sleep(0.01)
    assert sink.sent, "the first batch was never handed off"
    # logging only appends: 20000 calls return although the writer never answers (a log
    # that waited on it would never return); the deadline is generous, for a loaded machine
    logger = threading.Thread(
        target=lambda: [runs.log("a", step, {"x": float(step)}) for step in range(1, 20_001)],
        daemon=True,
    )
    logger.start()
    logger.join(120)
    assert not logger.is_alive(), "log() calls waited behind a writer that never answers"
    assert not runs.flush(0.2)  # not written, and flush says so within its wait
    st = runs.status()
    assert len(sink.sent) == 1  # one call in flight at most: nothing piles up at the writer
    assert st["buffered"] == 1000 and st["dropped"] == 19_000 and runs.errors == 19_000
    assert st["in_flight_s"] > 0


class DiesOnceSink(LocalRunsSink):
    """The writer dies under the first batch (a killed actor); the next one works."""

    def __init__(self, writer: RunsWriter) -> None:
        super().__init__(writer)
        self.calls = 0

    def poll(self, handle: object):
        self.calls += 1
        if self.calls == 1:
            return "failed", RuntimeError("The actor died unexpectedly before finishing this task")
        return super().poll(handle)

    def submit(self, batch: Batch) -> object:
        return batch if self.calls == 0 else super().submit(batch)


def test_a_batch_whose_writer_died_is_sent_again():
    store: dict = {}

    def factory(name: str, run_id: str | None) -> FakeTracker:
        return FakeTracker(store, name, run_id)

    runs = SessionRuns(DiesOnceSink(RunsWriter("u", "e", factory)), interval_s=0.01)
    for step in range(1, 6):
        runs.log("a", step, {"x": float(step)})
    assert runs.flush(120.0)
    assert [s for s, _ in store["a"][0].rows] == [1, 2, 3, 4, 5]  # nothing lost, in order
    assert runs.status()["writer_failures"] == 1
    runs.close(120.0)


class HandOffHeld(LocalRunsSink):
    """``submit`` does not return until the test sets ``release`` (Ray placing the call, a
    writer process still starting); ``entered`` says a batch is being handed off."""

    def __init__(self, writer: RunsWriter) -> None:
        super().__init__(writer)
        self.entered, self.release = threading.Event(), threading.Event()

    def submit(self, batch: Batch) -> object:
        self.entered.set()
        assert self.release.wait(120), "the test never released the hand-off"
        return super().submit(batch)


def test_flush_does_not_report_written_while_a_batch_is_still_being_handed_off():
    """The rows have left the buffer but the call is not placed: flush (what a host's close
    reports as ``runs_ended``) must not say they are written."""
    store: dict = {}

    def factory(name: str, run_id: str | None) -> FakeTracker:
        return FakeTracker(store, name, run_id)

    sink = HandOffHeld(RunsWriter("u", "e", factory))
    runs = SessionRuns(sink, interval_s=0.01)
    runs.log("a", 1, {"x": 1.0})
    runs.end("a")
    assert sink.entered.wait(120), "the batch was never handed off"
    assert runs.flush(0.0) is False and store == {}
    sink.release.set()
    assert runs.flush(120.0) and store["a"][0].ended == "FINISHED"
    runs.close(120.0)
