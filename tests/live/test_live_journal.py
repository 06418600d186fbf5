"""The journal: a restarted host rebuilds each session exactly and resumes after its last candle."""

import math
import uuid

import numpy as np
import pytest
from live_support import FakePredictor, settings, synthetic

from pipelines.live import Journal, Session, TrainingQueue, iter_candles, tick


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str | None:
    """None: the embedded SQLite files; else the session's PostgreSQL (run.database_url)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def open_journal(database_url, tmp_path):
    """``open_journal(name)``: the journal ``name`` of this test, a new handle each call (a new
    host process), as a file under tmp_path or rows in the shared PostgreSQL database."""
    prefix = uuid.uuid4().hex[:8]  # tests share the database: each its own journal names

    def open_(name: str) -> Journal:
        if database_url is None:
            return Journal(tmp_path / "live" / f"{name}.sqlite", name=name)
        return Journal(database_url, name=f"{prefix}-{name}")

    return open_


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == b[k], k


def test_restart_resumes_after_the_last_journaled_candle_with_state_intact(open_journal):
    frame = synthetic(220)
    s = settings()
    cands = list(iter_candles(frame))
    fake = FakePredictor()

    # the reference: one session that never stops
    ref = Session("x", "SYN", "1h", "every_candle", s)
    ref_samples = []
    for c in cands:
        tick([(ref, c)], fake)
        ref_samples += [(x.time, x.y_action) for x in ref.take_samples()]

    journal = open_journal("m")
    first = Session("x", "SYN", "1h", "every_candle", s)
    samples = []
    for c in cands[:120]:
        tick([(first, c)], fake, journal=journal)
        samples += [(x.time, x.y_action) for x in first.take_samples()]
    first.on_candle(cands[120])  # the host dies mid-step: nothing of this step is journaled
    del first, journal

    journal = open_journal("m")  # a new host process
    restored, _ = journal.restore("x", s)
    last = journal.last_time("x")
    assert last == cands[119].time
    rest = [c for c in cands if c.time > last]
    assert rest[0] is cands[120]  # the interrupted candle is fed again, nothing skipped
    for c in rest:
        tick([(restored, c)], fake, journal=journal)
        samples += [(x.time, x.y_action) for x in restored.take_samples()]

    same(restored.summary(), ref.summary())
    assert samples == ref_samples
    assert [t.as_dict() for t in restored.trades] == [t.as_dict() for t in ref.trades]
    made_at = [t for t, _ in journal.events("x", "prediction")]
    assert made_at == sorted(set(made_at)) and len(made_at) == ref.metrics.predictions


def test_training_accounting_survives_a_restart(open_journal):
    frame = synthetic(80)
    s = settings()
    journal = open_journal("j")
    queue = TrainingQueue(capacity=100, batch_size=8)
    session = Session("a", "SYN", "1h", "every_candle", s)
    for c in iter_candles(frame):
        tick([(session, c)], FakePredictor(), queue=queue, journal=journal)
        batch = queue.take()
        if batch is not None:
            if batch.id == 2:
                queue.timed_out(batch.id)
                journal.record_training(batch, "timeout")
            else:
                queue.done(batch.id, {"total_loss": 1.0 / batch.id})
                journal.record_training(batch, "done", {"total_loss": 1.0 / batch.id})
    live = queue.counts["a"]
    assert live.requested == 80 - 15 - 3 and live.timeouts == 1

    _, counts = open_journal("j").restore("a", s)
    assert (counts.requested, counts.done, counts.timeouts) == (live.requested, live.done, 1)
    assert counts.pending == 0  # what waited in the dead host's queue is counted as dropped
    assert counts.dropped == live.dropped + live.pending
    assert list(counts.losses) == list(live.losses)
    fresh = TrainingQueue(capacity=100, batch_size=8)
    fresh.adopt("a", counts)
    assert fresh.counts["a"].summary()["train_requested"] == live.requested


def test_chart_returns_candles_ghosts_pivots_signals_and_trades(open_journal):
    frame = synthetic(150)
    journal = open_journal("c")
    session = Session("c", "SYN", "1h", "none", settings())
    for c in iter_candles(frame):
        tick([(session, c)], FakePredictor(), journal=journal)
    since = int(frame.index[100].value)
    chart = journal.chart("c", since)
    assert len(chart["candles"]) == 50
    np.testing.assert_array_equal(chart["candles"].to_numpy(), frame.iloc[100:].to_numpy())
    assert len(chart["ghosts"]) == len(chart["signals"]) == 50
    assert (
        chart["ghosts"]["time"] - chart["ghosts"]["made_at"] == frame.index[1] - frame.index[0]
    ).all()
    assert set(chart["signals"]["action"]) <= {"HOLD", "BUY", "SELL"}
    assert len(chart["pivots"]) > 0 and set(chart["pivots"]["kind"]) <= {"H", "L"}
    assert len(chart["trades"]) > 0 and (chart["trades"]["exit_time"] >= frame.index[100]).all()


def test_a_failed_write_loses_nothing_the_next_write_carries_it(database_url, tmp_path):
    """A tick whose journal write does not commit (here: another connection holds the write
    lock; a full disk or a lost server fails the same way) raises a JournalError that names the
    journal, and the sessions keep its records: the next tick journals both steps, so the journal
    holds every candle the session took, its accounting adds up and a restart rebuilds the same
    session."""
    import contextlib
    import sqlite3

    from pipelines.errors import JournalError

    name = f"j-{uuid.uuid4().hex[:8]}"
    if database_url is None:
        target: object = tmp_path / f"{name}.sqlite"
    else:  # a write waits for a lock 0.5 s at most, then fails (libpq options in the URL)
        target = f"{database_url}?options=-c%20lock_timeout%3D500"

    @contextlib.contextmanager
    def write_lock_held_elsewhere():
        if database_url is None:
            other = sqlite3.connect(target, timeout=0)
            other.execute("BEGIN IMMEDIATE")
            yield
            other.rollback()
            other.close()
        else:
            import psycopg

            with psycopg.connect(database_url.replace("+psycopg", "")) as other:
                other.execute("LOCK TABLE journal_candles IN ACCESS EXCLUSIVE MODE")
                yield
                other.rollback()

    cands = list(iter_candles(synthetic(110)))
    s = settings()
    journal = Journal(target, name=name)
    queue = TrainingQueue(capacity=1000, batch_size=8)
    session = Session("x", "SYN", "1h", "every_candle", s)
    ref = Session("x", "SYN", "1h", "every_candle", s)
    for i, c in enumerate(cands):
        tick([(ref, c)], FakePredictor())
        if i == 100:
            with write_lock_held_elsewhere(), pytest.raises(JournalError, match=name):
                tick([(session, c)], FakePredictor(), queue=queue, journal=journal)
        else:
            tick([(session, c)], FakePredictor(), queue=queue, journal=journal)
        batch = queue.take()
        if batch is not None:
            queue.done(batch.id, {"total_loss": 1.0})
            journal.record_training(batch, "done", {"total_loss": 1.0})

    assert [c.time for c in journal.candles("x")] == [c.time for c in cands]
    counts = journal.train_counts("x")
    live = queue.counts["x"]
    assert (counts.requested, counts.done) == (live.requested, live.done)
    assert counts.requested == ref.metrics.samples  # the failed tick's samples queued once
    restored, _ = Journal(target, name=name).restore("x", s)
    same(restored.summary(), ref.summary())
    np.testing.assert_array_equal(
        restored.history.windows(16, (0,))[0], ref.history.windows(16, (0,))[0]
    )


def test_a_resumed_feed_starts_after_a_skipped_bad_candle_not_at_it(open_journal):
    """A NaN candle is skipped and counted once; a host that dies after it resumes the feed
    after it (``fed_until``), so a restart does not count it a second time."""
    from pipelines.live import Candle

    cands = list(iter_candles(synthetic(60)))
    bad = Candle(cands[40].time, float("nan"), 1.0, 1.0, 1.0, 1.0)
    feed = [*cands[:40], bad, *cands[41:]]
    s = settings()
    ref = Session("x", "SYN", "1h", "none", s)
    for c in feed:
        tick([(ref, c)], FakePredictor())
    journal = open_journal("b")
    first = Session("x", "SYN", "1h", "none", s)
    for c in feed[:41]:  # ... the bad candle is the last one the dead host's feed gave
        tick([(first, c)], FakePredictor(), journal=journal)
    assert journal.last_time("x") == cands[39].time and journal.fed_until("x") == bad.time
    restored, _ = journal.restore("x", s)
    for c in (c for c in feed if c.time > journal.fed_until("x")):
        tick([(restored, c)], FakePredictor(), journal=journal)
    assert ref.summary()["bad_data"]["nan"] == 1  # (and the gap it leaves, once)
    assert restored.summary()["bad_data"] == ref.summary()["bad_data"]
    same(restored.summary(), ref.summary())


def test_a_host_taken_over_by_a_newer_one_writes_nothing_more(open_journal):
    """One writer per journal: a host declared dead but still running (its node cut off) gets a
    JournalError from its next write once the host that replaced it claimed the journal, so the
    two never journal the same session's candles side by side."""
    from pipelines.errors import JournalError

    cands = list(iter_candles(synthetic(40)))
    s = settings()
    old = open_journal("h")
    first = Session("x", "SYN", "1h", "none", s)
    for c in cands[:20]:
        tick([(first, c)], FakePredictor(), journal=old)
    new = open_journal("h")
    new.claim()
    restored, _ = new.restore("x", s)
    with pytest.raises(JournalError, match="taken over by a newer host"):
        tick([(first, cands[20])], FakePredictor(), journal=old)
    for c in cands[20:]:
        tick([(restored, c)], FakePredictor(), journal=new)
    assert [c.time for c in new.candles("x")] == [c.time for c in cands]
    ref = Session("x", "SYN", "1h", "none", s)
    for c in cands:
        tick([(ref, c)], FakePredictor())
    made = [t for t, _ in new.events("x", "prediction")]
    assert made == sorted(set(made)) and len(made) == ref.metrics.predictions > 0
