"""The training queue: bounded, coalescing, one call in flight, exact accounting per session."""

import numpy as np
import pytest

from pipelines.errors import InvalidInputError
from pipelines.live import Sample, TrainingQueue


def samples(session_id: str, n: int, start: int = 0) -> list[Sample]:
    x, y = np.zeros((16, 9), np.float32), np.zeros(5, np.float32)
    return [Sample(session_id, start + i, x, y, 0, "move", start + i + 3) for i in range(n)]


def balanced(q: TrainingQueue) -> None:
    pending = {sid: 0 for sid in q.counts}
    for batch in [q.in_flight] if q.in_flight and not q.overdue else []:  # timed out: dropped
        for s in batch.samples:
            pending[s.session_id] += 1
    for s in q._queue:
        pending[s.session_id] += 1
    for sid, c in q.counts.items():
        assert c.requested == c.done + c.dropped + c.pending
        assert c.pending == pending[sid]


def test_overflow_is_dropped_and_counted_per_session_and_batches_coalesce():
    q = TrainingQueue(capacity=10, batch_size=4)
    assert q.put(samples("a", 6)) == 0
    assert q.put(samples("b", 7)) == 3  # the queue holds 10: b's last 3 are dropped
    assert (q.counts["a"].dropped, q.counts["b"].dropped) == (0, 3)
    balanced(q)
    b1 = q.take()
    assert [s.session_id for s in b1.samples] == ["a"] * 4  # oldest first, up to batch_size
    assert q.take() is None  # one call in flight
    x, yc, ya = b1.arrays()
    assert x.shape == (4, 16, 9) and yc.shape == (4, 5) and ya.dtype == np.int64
    q.done(b1.id, {"total_loss": 1.0}, now=5.0)
    b2 = q.take()
    assert b2.per_session() == {"a": 2, "b": 2}
    q.done(b2.id, {"total_loss": 0.5})
    balanced(q)
    assert q.counts["a"].done == 6 and q.counts["a"].last_train_time is not None
    assert q.counts["b"].summary()["train_pending"] == 2
    assert q.steps_done == 2


def test_failed_and_timed_out_calls_are_counted_exactly():
    q = TrainingQueue(capacity=100, batch_size=3)
    q.put(samples("a", 3) + samples("b", 3))
    b1 = q.take()
    q.failed(b1.id)  # the actor refused the batch: dropped
    assert q.counts["a"].dropped == 3
    b2 = q.take()
    q.timed_out(b2.id)  # past its deadline: a timeout, samples dropped for now, slot freed
    c = q.counts["b"]
    assert (c.timeouts, c.dropped, c.done, c.pending) == (1, 3, 0, 0)
    balanced(q)
    q.late_done(b2.id, {"total_loss": 0.2})  # the actor's answer came after all
    assert (c.timeouts, c.dropped, c.done) == (1, 0, 3)
    balanced(q)
    with pytest.raises(InvalidInputError, match="not the one timed out"):
        q.late_done(b2.id, {})
    with pytest.raises(InvalidInputError, match="not the one in flight"):
        q.done(99, {})


def test_a_timed_out_call_keeps_the_slot_until_the_actor_answers_it():
    """After a timeout no second batch goes out (it would only wait behind the first in the
    busy actor's mailbox); a late failure frees the slot with the samples still dropped."""
    q = TrainingQueue(capacity=100, batch_size=2)
    q.put(samples("a", 6))
    b1 = q.take()
    q.timed_out(b1.id)
    assert q.take() is None and q.in_flight is b1  # one call outstanding, one batch held
    with pytest.raises(InvalidInputError, match="times out once"):
        q.timed_out(b1.id)
    with pytest.raises(InvalidInputError, match="not the one in flight"):
        q.done(b1.id, {})  # a late answer is reported as late
    q.late_failed(b1.id)
    c = q.counts["a"]
    assert (c.dropped, c.timeouts, c.done, c.pending) == (2, 1, 0, 4)
    assert q.in_flight is None
    b2 = q.take()
    assert b2 is not None and b2.id != b1.id
    q.done(b2.id, {"total_loss": 1.0})
    assert (c.done, c.dropped, c.pending) == (2, 2, 2)
    balanced(q)


def test_loss_trend_is_defined_by_the_newer_half_against_the_older():
    q = TrainingQueue(capacity=100, batch_size=1, trend_window=8)
    q.put(samples("a", 16))
    for loss in [1.0] * 4 + [0.5] * 4:
        q.done(q.take().id, {"total_loss": loss})
    assert q.counts["a"].summary()["loss_trend"] == "improving"
    for loss in [2.0] * 8:
        q.done(q.take().id, {"total_loss": loss})
    assert q.counts["a"].summary()["loss_trend"] == "flat"
