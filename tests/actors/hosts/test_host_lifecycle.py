"""A session host's life without Ray: a clean end stops its sessions for good, a crash resumes
them (one that cannot resume does not take the others down), and a chart never waits for the
host loop's lock."""

from __future__ import annotations

import threading

from host_support import InstantTraining, host_core, journal_of

from actors.hosts.runs_writer import LocalRunsSink, RunsWriter
from actors.hosts.tracking import SessionRuns
from pipelines.errors import DataSourceError
from pipelines.live import Journal


def steps(core, n: int) -> None:
    for _ in range(n):
        core.step()


def test_a_clean_close_stops_every_session_and_the_next_host_resumes_none(make_cfg):
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    sid = core.start_session("synthetic:SYN0", "1h", "every_candle", "replay", 0, -100)["id"]
    steps(core, 30)
    taken = core.status(sid)["metrics"]["candles"]
    report = core.close()
    assert report["journaled"] and report["stopped"] == [sid] and report["errors"] == []
    assert report["runs_ended"] is None  # tracking is off
    assert core.close() is report and core.step() > 0  # closed: nothing more runs

    # the next run of the same run name (e.g. another `candleray live`): new hosts
    calls = InstantTraining()
    nxt = host_core(cfg, calls=calls)
    assert nxt.restore() == [] and nxt.list_sessions() == []
    other = nxt.start_session("synthetic:SYN1", "1h", "none", "replay", 0, -50)["id"]
    steps(nxt, 30)
    assert other != sid and [s["id"] for s in nxt.list_sessions()] == [other]
    assert calls.samples == 0  # the old every_candle session trains nothing any more
    nxt.close()
    j = journal_of(cfg)
    assert j.stopped(sid) and j.restore(sid, core.settings)[0].metrics.candles == taken


def test_a_new_host_after_a_run_that_died_stops_its_sessions_instead_of_resuming(make_cfg):
    # the run was SIGKILLed (no clean stop journaled); a later, unrelated run of the same run
    # name starts new hosts (resume=False: Ray did not restart them) and must not replay and
    # train the old every_candle session unseen
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    sid = core.start_session("synthetic:SYN0", "1h", "every_candle", "replay", 0, -100)["id"]
    steps(core, 10)
    core.journal.close()  # killed: no close(), nothing journaled stopped

    calls = InstantTraining()
    nxt = host_core(cfg, calls=calls)
    assert nxt.restore(resume=False) == [] and nxt.list_sessions() == []
    assert nxt.stats()["not_resumed"] == [sid]  # said, not silent
    steps(nxt, 20)
    assert calls.samples == 0
    nxt.close()
    assert journal_of(cfg).stopped(sid)
    assert host_core(cfg).restore() == []  # stopped for good: a later crash restart neither


def test_a_host_that_died_resumes_its_sessions_one_started_without_warm_up_too(make_cfg):
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    warm = core.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100)["id"]
    steps(core, 10)
    # row 0: no rows before it to warm up on, and the host dies before its first candle
    cold = core.start_session("synthetic:SYN1", "1h", "none", "replay", 0, 0)["id"]
    taken = core.status(warm)["metrics"]["candles"]
    core.journal.close()  # killed: no close(), nothing journaled stopped

    again = host_core(cfg)
    assert again.restore() == sorted([warm, cold])
    steps(again, 20)
    assert again.status(warm)["metrics"]["candles"] == taken + 20
    assert again.status(cold)["metrics"]["candles"] == 20  # from row 0, as it was started
    again.close()


class RefusesOne(Journal):
    """A journal whose ``refuse`` session cannot be rebuilt (as when its series is gone)."""

    def __init__(self, path, refuse: str) -> None:
        super().__init__(path)
        self.refuse = refuse

    def restore(self, session_id, *args, **kwargs):
        if session_id == self.refuse:
            raise DataSourceError(f"{session_id}: its series is not in the registry any more")
        return super().restore(session_id, *args, **kwargs)


def test_one_session_that_cannot_resume_is_reported_and_the_others_resume(make_cfg):
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    bad = core.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100)["id"]
    good = core.start_session("synthetic:SYN1", "1h", "none", "replay", 0, -100)["id"]
    steps(core, 10)
    path = core.journal.path
    core.journal.close()  # the host dies

    again = host_core(cfg, journal=RefusesOne(path, bad))
    assert again.restore() == [good]  # no exception: the actor starts, no restart loop
    assert "series is not in the registry" in again.stats()["restore_failed"][bad]
    steps(again, 5)
    assert again.status(good)["metrics"]["candles"] == 15
    report = again.close()
    assert sorted(report["stopped"]) == sorted([bad, good]) and report["journaled"]
    assert host_core(cfg).restore() == []  # a clean end stopped the one not resumed too


def test_a_chart_is_read_while_the_loop_holds_the_host_lock(make_cfg):
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    sid = core.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100)["id"]
    steps(core, 40)
    got: dict = {}
    with core.lock:  # what the loop holds for each step
        reader = threading.Thread(target=lambda: got.update(core.chart(sid)), daemon=True)
        reader.start()
        reader.join(60)
        assert not reader.is_alive(), "chart() waited for the host loop's lock"
    assert len(got["ghosts"]) == core.status(sid)["metrics"]["predictions"] == 40
    assert len(got["candles"]) > 40  # the warm-up bars and the 40 played
    core.close()


class Tracker:
    """What the writer opens per session (a Tracker stand-in): records how the run ended."""

    ended: dict[str, str] = {}

    def __init__(self, name: str, run_id: str | None) -> None:
        self.name, self.run_id = name, run_id or f"run-{name}"

    def log_metrics(self, metrics, step) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str) -> None:
        Tracker.ended[self.name] = status


class NeverAnswers:
    """A runs writer that never answers (its process is still starting, or the store hangs)."""

    def submit(self, batch):
        return object()

    def poll(self, handle):
        return None


def test_close_ends_each_sessions_run_or_says_it_did_not(make_cfg):
    cfg = make_cfg("live.hosts=1")
    runs = SessionRuns(LocalRunsSink(RunsWriter("sqlite:///unused.db", "e-live", Tracker)))
    core = host_core(cfg, runs=runs)
    sid = core.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100)["id"]
    steps(core, 5)
    report = core.close(timeout_s=120)
    assert report["runs_ended"] is True and report["errors"] == []
    assert Tracker.ended[sid] == "FINISHED"

    stuck = host_core(make_cfg("live.hosts=1"), runs=SessionRuns(NeverAnswers(), interval_s=0.01))
    stuck.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100)
    steps(stuck, 5)
    report = stuck.close(timeout_s=0.5)  # the writer never answers, whatever the wait
    assert report["runs_ended"] is False and report["journaled"]
    assert "did not finish within" in report["errors"][0]


def test_a_prediction_whose_session_ended_before_its_candle_is_counted_expired(make_cfg):
    """A session that finished (it took its max_candles) or was stopped leaves its last
    prediction unsettled for good: expired 1, journaled, and not counted again by a host that
    resumes it; a running session has none expired."""
    cfg = make_cfg("live.hosts=1")
    core = host_core(cfg)
    done = core.start_session("synthetic:SYN0", "1h", "none", "replay", 0, -100, 20)["id"]
    running = core.start_session("synthetic:SYN1", "1h", "none", "replay", 0, -100)["id"]
    steps(core, 30)
    st = core.status(done)
    assert st["state"] == "finished" and st["metrics"]["predictions"] == 20
    assert (st["metrics"]["settled"], st["metrics"]["expired"]) == (19, 1)
    assert core.status(running)["metrics"]["expired"] == 0
    core.stop_session(running)
    assert journal_of(cfg).restore(running, core.settings)[0].summary()["expired"] == 1
    core.journal.close()  # the host dies: the finished session resumes with its count
    again = host_core(cfg)
    assert again.restore() == [done]
    steps(again, 3)
    assert again.status(done)["metrics"]["expired"] == 1
    again.close()
    assert journal_of(cfg).restore(done, core.settings)[0].summary()["expired"] == 1
