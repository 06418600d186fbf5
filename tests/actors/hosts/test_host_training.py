"""The host's training driver (no Ray): a failed send or a hung actor never stalls or floods."""

from __future__ import annotations

import numpy as np
import pytest

from actors.hosts.training import TrainingDriver
from pipelines.live import Journal, Sample, TrainingQueue


class Calls:
    """TrainCalls whose answers the test sets: ``answers[handle]`` ("done"/"failed", value);
    ``refuse`` makes the next ``submit`` raise, as Ray does when the object store is full."""

    def __init__(self) -> None:
        self.sent: list[int] = []  # batch sizes, in order
        self.answers: dict[int, tuple[str, object]] = {}
        self.refuse = False

    def submit(self, x, y_candle, y_action):
        if self.refuse:
            self.refuse = False
            raise RuntimeError("ObjectStoreFullError: no space to put the batch")
        self.sent.append(len(x))
        return len(self.sent)  # the handle

    def poll(self, handle):
        return self.answers.get(handle)

    def answer_all(self, kind: str = "done") -> None:
        for h in range(1, len(self.sent) + 1):
            self.answers.setdefault(h, (kind, {"total_loss": 1.0} if kind == "done" else "boom"))


def put(q: TrainingQueue, n: int, start: int = 0) -> None:
    x, y = np.zeros((16, 9), np.float32), np.zeros(5, np.float32)
    q.put([Sample("s", start + i, x, y, 0, "move", start + i) for i in range(n)])


@pytest.fixture
def rig(tmp_path):
    q = TrainingQueue(capacity=1000, batch_size=4)
    calls, counters = Calls(), {}
    journal = Journal(tmp_path / "j.sqlite")
    yield q, calls, TrainingDriver(q, calls, journal, 10.0, counters), counters, journal
    journal.close()


def outcomes(journal: Journal) -> list[str]:
    return [d["outcome"] for _, d in journal.events("s", "train_result")]


def test_a_batch_that_cannot_be_sent_is_dropped_and_training_goes_on(rig):
    q, calls, d, counters, journal = rig
    put(q, 12)
    calls.refuse = True
    d.drive(now=0.0)  # the first batch cannot be sent
    for t in range(1, 10):
        calls.answer_all()
        d.drive(now=float(t))
    c = q.counts["s"]
    assert (c.requested, c.done, c.dropped, c.pending) == (12, 8, 4, 0)
    assert calls.sent == [4, 4] and counters["failed_calls"] == 1
    assert outcomes(journal) == ["failed", "done", "done"]
    assert d.inflight is None and q.in_flight is None


def test_a_hung_actor_gets_one_call_however_many_deadlines_pass(rig):
    q, calls, d, counters, journal = rig
    for t in range(200):  # the actor never answers; samples keep coming
        put(q, 4, start=4 * t)
        d.drive(now=float(t) * 20.0)  # every step is past the deadline of the one before
    assert calls.sent == [4]  # nothing piled up in the actor's mailbox
    assert counters["timeouts"] == 1 and outcomes(journal) == ["timeout"]
    c = q.counts["s"]
    assert (c.dropped, c.timeouts) == (4, 1) and c.pending == len(q) == 796
    assert not d.busy  # a timed-out call is looked at on the loop's own pace
    calls.answer_all()  # the actor answers after all: credited, and the next batch goes
    d.drive(now=5000.0)
    assert (c.done, c.dropped) == (4, 0) and counters["late_answers"] == 1
    assert calls.sent == [4, 4] and d.busy
    assert c.requested == c.done + c.dropped + c.pending


def test_a_timed_out_call_that_fails_frees_the_slot_with_its_samples_dropped(rig):
    q, calls, d, counters, journal = rig
    put(q, 8)
    d.drive(now=0.0)
    d.drive(now=11.0)  # past the 10 s deadline
    d.drive(now=12.0)
    assert calls.sent == [4]
    calls.answer_all("failed")  # e.g. the actor died: Ray fails its pending calls
    d.drive(now=13.0)
    c = q.counts["s"]
    assert calls.sent == [4, 4] and (c.dropped, c.timeouts, c.pending) == (4, 1, 4)
    assert outcomes(journal) == ["timeout"]  # the drop was journaled at the timeout
    assert c.requested == c.done + c.dropped + c.pending


def test_a_result_whose_journal_write_fails_is_kept_and_written_by_the_next_drive(tmp_path, rig):
    """Another process holds the journal's write lock (a full disk fails the same way) when
    the actor's answer comes: the result is not lost, the next drive journals it, so a
    restarted host counts the samples done, not dropped."""
    import sqlite3

    q, calls, d, counters, journal = rig
    put(q, 4)
    d.drive(now=0.0)
    calls.answer_all()
    other = sqlite3.connect(tmp_path / "j.sqlite", timeout=0)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held by someone else
    try:
        d.drive(now=1.0)  # the answer arrives; its write does not commit
        assert outcomes(journal) == [] and len(d.unwritten) == 1
        assert q.counts["s"].done == 4 and d.inflight is None  # training went on
    finally:
        other.rollback()
        other.close()
    d.drive(now=2.0)
    assert outcomes(journal) == ["done"] and d.unwritten == []
    counts = Journal(tmp_path / "j.sqlite").train_counts("s")
    assert (counts.done, counts.dropped) == (4, 0)
