"""HostCore: the logic of a SessionHost actor, a plain class driven by one loop.

A host holds many sessions (``pipelines.live.Session``) of one model. Each ``step(now)``:

1. pulls the candles that arrived from every session's feed (``actors.hosts.feeds``; an
   exchange is polled on a thread of the feed's own, never under the lock), until a session
   has taken its ``max_candles``,
2. runs ``pipelines.live.tick`` over them: every session with a new window is predicted in
   ONE batched forward pass from the newest weights the host has loaded, settled, journaled
   (one transaction per tick) and its due samples go into the host's ``TrainingQueue``,
3. drives training: one ``train_batch`` call in flight per host (``actors.hosts.training``).

It returns how long the loop may sleep before the next candle is due.

Training calls: ``actors.hosts.training`` (one ``train_batch`` in flight per host, never
waited on; timeouts counted and late answers credited). Inference never waits for any of it.

Weights are loaded by the caller (``load_weights``), from the ModelActor's read-only
methods, on its own thread: predicting never waits for a weights download either.

Concurrency: one ``lock`` guards everything; the loop holds it for one step, API calls for
their own short work. The journal's writer and the training queue are only touched under it;
``chart`` reads the journal on a connection of its own, without the lock, so a dashboard
never holds up predictions.

Lifecycle: ``restore`` resumes what a host that died left running (a session whose feed cannot
be reopened is reported in ``stats()["restore_failed"]``; the others resume); ``close`` is a
clean end: every session is journaled ``stopped`` first (a later host of the same run name
resumes none of them), then their MLflow runs end within a deadline, and it reports whether
they did.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from actors.hosts.feeds import FeedPlan, Hosted, open_source
from actors.hosts.tracking import SessionRuns, loggable
from actors.hosts.training import TrainCalls, TrainingDriver
from conf import Config
from pipelines.data.sources import parse_symbol
from pipelines.errors import CandlerayError, CapacityError, InvalidInputError
from pipelines.live import (
    Journal,
    Session,
    SessionSettings,
    TrainingQueue,
    predict_windows,
    tick,
)

log = logging.getLogger(__name__)

MAX_ROUNDS = 64  # ticks per step at most, so API calls get the lock between steps
LATENCIES = 20_000  # candle -> prediction latencies kept for stats()


def assign_host(key: str, loads: Sequence[int]) -> int:
    """The host for a new session: the least loaded; ties broken by a stable hash of ``key``."""
    if not loads:
        raise InvalidInputError("no session hosts to assign to; live.hosts must be >= 1")
    low = min(loads)
    ties = [i for i, n in enumerate(loads) if n == low]
    return ties[zlib.crc32(key.encode()) % len(ties)]


def host_of(session_id: str) -> int:
    """The index of the host holding ``session_id`` (ids start with ``h<index>-``)."""
    m = re.match(r"h(\d+)-", session_id)
    if m is None:
        raise InvalidInputError(
            f"session id {session_id!r} is not a live session id (they look like "
            "h0-synthetic-SYN0-1h); list them with list_sessions()"
        )
    return int(m.group(1))


class HostCore:
    def __init__(
        self,
        cfg: Config,
        index: int,
        predictor: Any,
        calls: TrainCalls,
        journal: Journal,
        *,
        clock: Callable[[], float],
        runs: SessionRuns | None = None,
        exchange: Any = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.index = cfg, index
        self.predictor, self.calls, self.journal = predictor, calls, journal
        self.clock, self.runs, self.exchange = clock, runs, exchange
        self.wake = wake  # wakes the loop when an exchange's candles arrive (PollSource)
        self.settings = SessionSettings.from_config(cfg)
        self.queue = TrainingQueue(
            cfg.live.queue_capacity, cfg.train.batch_size, cfg.live.trend_window
        )
        self.lock = threading.RLock()
        self.sessions: dict[str, Hosted] = {}
        self._journaled_runs: set[str] = set()
        self._restored: list[str] = []  # sessions whose last window still needs predicting
        self.restore_failed: dict[str, str] = {}  # journaled sessions not resumed, and why
        self.not_resumed: list[str] = []  # left running by a dead run's host: stopped at start
        self.closed: dict[str, Any] | None = None  # close()'s report, once closed
        self.latencies: deque[float] = deque(maxlen=LATENCIES)
        self.counters = {"ticks": 0, "predictions": 0, "loop_errors": 0}
        self.training = TrainingDriver(
            self.queue, calls, journal, cfg.ray.call_timeout_s, self.counters, index
        )

    # -- sessions --------------------------------------------------------------------------
    def restore(self, *, resume: bool = True) -> list[str]:
        """Resume every session the journal holds that was not stopped, after its last candle.

        ``resume=False`` is a new host of the run name, not Ray restarting a crashed one (the
        run that left these sessions running died without its clean stop): they are journaled
        stopped and listed in ``not_resumed``, never replayed and trained on unseen by the new
        run. One session that cannot be resumed (its series is gone, its exchange refuses, a
        state this code cannot read) is logged and listed in ``restore_failed`` with the
        reason; the others resume. Raising here would fail the actor's start, and Ray would
        restart it into the same failure until no session was left running at all.
        """
        got = []
        for sid in self.journal.session_ids():
            feed = self.journal.events(sid, "feed", limit=1)
            if not feed or self.journal.stopped(sid):
                continue
            if not resume:
                self.journal.write([(sid, [("stopped", 0, {"reason": "not_resumed"})])])
                self.not_resumed.append(sid)
                log.warning(
                    "host %d: session %s was left running by a host that died with its run; "
                    "stopped, not resumed (only a host Ray restarts resumes its sessions)",
                    self.index,
                    sid,
                )
                continue
            try:
                self._resume(sid, feed[0][1])
            except Exception as exc:  # any cause: the other sessions must still resume
                self.restore_failed[sid] = f"{type(exc).__name__}: {exc}"
                log.exception("host %d could not resume %s; it stays journaled", self.index, sid)
                continue
            got.append(sid)
        return got

    def _resume(self, sid: str, feed: dict[str, Any]) -> None:
        session, counts = self.journal.restore(sid, self.settings, self.cfg.live.trend_window)
        plan = FeedPlan.from_json(feed)
        spec = parse_symbol(session.symbol, session.timeframe)
        # after the last candle the feed gave, a skipped bad one included: not fed twice
        after = self.journal.fed_until(sid)
        source, _ = open_source(self.cfg, spec, plan, self.clock, after, self.exchange, self.wake)
        self.queue.counts[sid] = counts
        self.sessions[sid] = Hosted(session, plan, source)
        runs = self.journal.events(sid, "mlflow", limit=1)
        if runs and self.runs is not None:
            self.runs.resume(sid, runs[0][1]["run_id"])
            self._journaled_runs.add(sid)
        if session.window_to_predict() is not None:  # died between candle and prediction
            self._restored.append(sid)
        log.info("host %d resumed %s after %s", self.index, sid, session.last_time)

    def start_session(
        self,
        symbol: str,
        timeframe: str | None,
        mode: str,
        source: str,
        speed: float | None = None,
        start: int | str | None = None,
        max_candles: int | None = None,
    ) -> dict[str, Any]:
        plan = FeedPlan.checked(source, speed, start, max_candles)
        with self.lock:  # before loading anything: a full host refuses at once
            self._check_room()
        spec = parse_symbol(symbol, timeframe or self.cfg.data.timeframe)
        if timeframe and spec.timeframe != timeframe:
            if "@" in symbol:
                raise InvalidInputError(
                    f"{symbol!r} names timeframe {spec.timeframe} but 'timeframe' is "
                    f"{timeframe}; give the timeframe once, after @ or as 'timeframe'"
                )
            # a sample's native timeframe is only its default: an asked one resamples, as @tf
            spec = dataclasses.replace(spec, timeframe=timeframe)
        Session("check", spec.key, spec.timeframe, mode, self.settings)  # checks mode
        # outside the lock: loading a series or asking an exchange for its history may take
        # seconds, and every other session keeps predicting meanwhile
        src, warm = open_source(self.cfg, spec, plan, self.clock, None, self.exchange, self.wake)
        try:
            with self.lock:
                self._check_room()  # again under the lock: two starts may have raced
                sid = self._new_id(spec.key)
                session = Session(sid, spec.key, spec.timeframe, mode, self.settings)
                session.prime(warm[-session.history.capacity :])
                # its state too when there was no warm-up: the sessions table is what restore
                # reads, and a host that dies before the first candle must still resume it
                self.journal.write_sessions(
                    [session], [(sid, [("feed", 0, plan.to_json())])], state=True
                )
                self.sessions[sid] = Hosted(session, plan, src)
                return self._status(sid)
        except BaseException:
            src.close()  # a poll source's thread must not outlive a session that never started
            raise

    def _check_room(self) -> None:
        """CapacityError when this host holds ``live.max_sessions`` sessions: each costs the
        host memory (README: about 1.5 MB), so an unbounded number would take it down."""
        cap = self.cfg.live.max_sessions
        if len(self.sessions) >= cap:
            raise CapacityError(
                f"session host {self.index} holds {len(self.sessions)} sessions, its limit "
                f"(live.max_sessions={cap}); stop some (DELETE /sessions/{{id}}) or raise "
                "live.max_sessions or live.hosts"
            )

    def _new_id(self, key: str) -> str:
        base = f"h{self.index}-" + re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")
        known = set(self.journal.session_ids()) | set(self.sessions)
        sid, k = base, 1
        while sid in known:
            k += 1
            sid = f"{base}-{k}"
        return sid

    def _get(self, sid: str) -> Hosted:
        h = self.sessions.get(sid)
        if h is None:
            raise InvalidInputError(
                f"no running session {sid!r} on host {self.index}; running: {sorted(self.sessions)}"
            )
        return h

    def set_mode(self, sid: str, mode: str) -> dict[str, Any]:
        with self.lock:
            h = self._get(sid)
            h.session.set_mode(mode)
            self.journal.write_session(h.session)
            return self._status(sid)

    def manual_train(self, sid: str, action: str) -> dict[str, Any]:
        """Mark the newest closed bar for training (``pipelines.live.policy`` says which sample)."""
        with self.lock:
            h = self._get(sid)
            asked = h.session.manual_sample(action)  # ModeError outside manual mode
            self.journal.write_session(h.session)
            return {"queued": 1, "session_id": sid, **asked}

    def stop_session(self, sid: str) -> dict[str, Any]:
        with self.lock:
            if sid in self.restore_failed:  # never resumed: stopped, so no later host tries
                self.journal.write([(sid, [("stopped", 0, {"reason": "stop_session"})])])
                del self.restore_failed[sid]
                return {"stopped": sid}
            h = self._get(sid)  # an unknown id is refused before anything changes
            # journaled first: if the write fails the session runs on, as its journal says
            # (its pending prediction, counted expired by end(), is pending again)
            ended_now = h.session.end()
            try:
                self.journal.write_sessions(
                    [h.session], [(sid, [("stopped", 0, {"reason": "stop_session"})])]
                )
            except BaseException:
                if ended_now:
                    h.session.reopen()
                raise
            del self.sessions[sid]
            h.source.close()
            self.queue.drop_session(sid)
            self._end_run(h)
            return {"stopped": sid}

    # -- reading ---------------------------------------------------------------------------
    def _status(self, sid: str) -> dict[str, Any]:
        h = self.sessions[sid]
        s, p = h.session, h.last
        return {
            "id": sid,
            "host": self.index,
            "symbol": s.symbol,
            "timeframe": s.timeframe,
            "mode": s.mode,
            **h.plan.to_json(),
            "state": "finished" if h.finished else "running",
            "metrics": s.summary(self.queue.session(sid)),
            "last_candles": [
                {"time": c.time, "open": c.open, "high": c.high, "low": c.low, "close": c.close}
                for c in s.history.candles()[-5:]
            ],
            "prediction": None
            if p is None
            else {
                "time": p.time,
                "target": p.target,
                "ghost": dict(zip(("open", "high", "low", "close"), p.ghost.tolist(), strict=True)),
                "probs": dict(zip(("HOLD", "BUY", "SELL"), p.probs.tolist(), strict=True)),
                "action": p.action,
                "signal": p.signal,
                "version": p.version,
            },
        }

    def status(self, sid: str) -> dict[str, Any]:
        with self.lock:
            self._get(sid)
            return self._status(sid)

    def list_sessions(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._status(sid) for sid in sorted(self.sessions)]

    def chart(self, sid: str, since: int | str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Candles, ghost candles, pivots, signals and trades from ``since`` (ns or ISO)."""
        t: int | None = since if isinstance(since, int) or since is None else None
        if isinstance(since, str):
            ts = pd.Timestamp(since)
            ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
            t = int(ts.as_unit("ns").value)
        # no lock: the journal reads on a connection of its own (WAL: the committed ticks),
        # so the loop goes on predicting however long a session's history takes to read
        frames = self.journal.chart(sid, t, self.settings.pivot_bars)
        out = {}
        for name, df in frames.items():
            d = df.reset_index() if name == "candles" else df
            out[name] = [
                {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in r.items()}
                for r in d.to_dict(orient="records")
            ]
        return out

    def stats(self) -> dict[str, Any]:
        with self.lock:
            counts = self.queue.counts.values()
            lat = np.array(self.latencies) * 1000.0
            return {
                "host": self.index,
                "sessions": len(self.sessions),
                **self.counters,
                "queued": len(self.queue),
                "in_flight": self.training.inflight is not None,
                "steps_done": self.queue.steps_done,
                "requested": sum(c.requested for c in counts),
                "done": sum(c.done for c in counts),
                "dropped": sum(c.dropped for c in counts),
                "pending": sum(c.pending for c in counts),
                "missed": sum(h.session.metrics.missed for h in self.sessions.values()),
                "weights_version": getattr(self.predictor, "version", -1),
                "latency_ms": {
                    "n": int(lat.size),
                    "p50": float(np.percentile(lat, 50)) if lat.size else None,
                    "p99": float(np.percentile(lat, 99)) if lat.size else None,
                },
                "restore_failed": dict(self.restore_failed),
                "not_resumed": list(self.not_resumed),
                "mlflow_errors": None if self.runs is None else self.runs.errors,
                "mlflow": None if self.runs is None else self.runs.status(),
            }

    def reset_latencies(self) -> None:
        with self.lock:
            self.latencies.clear()

    def load_weights(self, state: Any, version: int, generation: str | None) -> None:
        with self.lock:
            self.predictor.load(state, version, generation)

    # -- the loop --------------------------------------------------------------------------
    def step(self, now: float | None = None) -> float:
        """One pass (module doc); returns seconds until the next candle is due (capped)."""
        with self.lock:
            if self.closed is not None:  # shut down: the journal is closed, nothing runs
                return 1.0
            now = self.clock() if now is None else now
            if getattr(self.predictor, "generation", "") is None:  # no weights loaded yet:
                return 0.05  # candles wait in their feeds rather than meet a random model
            self._predict_restored()
            # one candle per session per tick; paced feeds that fell behind catch up in more
            # ticks, while an unpaced replay (speed 0) gives one candle per step
            for round_ in range(MAX_ROUNDS):
                arrived = []
                for h in self.sessions.values():
                    if h.finished:
                        continue
                    got = h.source.due(now, 1) if round_ == 0 or h.source.paced else []
                    if got:
                        arrived.append((h, *got[0]))
                if not arrived:
                    break
                self._tick(arrived)
            self.training.drive(self.clock())
            # a session that just finished has its feed stopped here (no polling, no buffer),
            # and its last prediction, which no candle will settle, is counted expired
            dues, ended = [], []
            for h in self.sessions.values():
                if not h.close_if_finished():
                    dues.append(h.source.next_due())
                elif h.session.end():
                    ended.append(h.session)
            if ended:  # a write that fails leaves the records with them: stop/close carry them
                self.journal.write_sessions(ended)
            soonest = min((d for d in dues if d is not None), default=now + 1.0)
            wait = max(0.0, soonest - self.clock())
            return min(wait, 0.02) if self.training.busy else min(wait, 1.0)

    def _predict_restored(self) -> None:
        """Predict the windows a killed host left waiting (journaled, never predicted)."""
        wins = []
        for sid in self._restored:
            if sid in self.sessions:
                session = self.sessions[sid].session
                w = session.window_to_predict()
                if w is not None:
                    wins.append((session, w))
        self._restored = []
        if not wins:
            return
        pred = predict_windows(self.predictor, [w for _, w in wins])
        for i, (s, _) in enumerate(wins):
            self.sessions[s.session_id].last = s.apply_prediction(
                pred.candle[i], pred.probs[i], pred.version
            )
        self.journal.write_sessions([s for s, _ in wins])

    def _tick(self, arrived: list[tuple[Hosted, Any, float]]) -> None:
        preds = tick(
            [(h.session, c) for h, c, _ in arrived],
            self.predictor,
            self.queue,
            self.journal,
        )
        done = self.clock()
        self.counters["ticks"] += 1
        for h, _c, at in arrived:
            p = preds.get(h.session.session_id)
            if p is not None:
                h.last = p
                self.latencies.append(done - at)
                self.counters["predictions"] += 1
        if self.runs is not None:
            self._track(arrived)

    def _track(self, arrived: list[tuple[Hosted, Any, float]]) -> None:
        assert self.runs is not None
        new_runs = []
        for h, _c, _at in arrived:
            s = h.session
            sid = s.session_id
            self.runs.log(sid, s.metrics.candles, loggable(s.summary(self.queue.session(sid))))
            run_id = self.runs.run_ids.get(sid)
            if run_id and sid not in self._journaled_runs:
                self._journaled_runs.add(sid)
                new_runs.append((sid, [("mlflow", 0, {"run_id": run_id})]))
        if new_runs:
            self.journal.write(new_runs)

    def _end_run(self, h: Hosted) -> None:
        """End the session's MLflow run, first logging what changed since its last candle
        (training answers that came after it), so the run ends on the session's final figures."""
        if self.runs is None:
            return
        s = h.session
        final = loggable(s.summary(self.queue.session(s.session_id)))
        self.runs.log(s.session_id, s.metrics.candles, final, only_changed=True)
        self.runs.end(s.session_id)

    def close(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """A clean end (``SessionHost.shutdown``): every session, running or not resumed, is
        journaled ``stopped`` so no later host resumes it; then each MLflow run ends on the
        session's final figures, waited for at most ``timeout_s``. Returns what happened:
        ``journaled`` (the stops committed), ``runs_ended`` (None without tracking; False if
        the writer did not answer in time or a store write failed: then ``errors`` says why).
        A second call returns the first one's report."""
        with self.lock:
            if self.closed is not None:
                return self.closed
            hosted = list(self.sessions.values())
            for h in hosted:
                h.source.close()
            stop = [*(h.session.session_id for h in hosted), *self.restore_failed]
            report: dict[str, Any] = {"host": self.index, "stopped": stop, "errors": []}
            for h in hosted:  # a pending prediction can no longer settle: counted expired
                h.session.end()
            try:
                self.journal.write_sessions(
                    [h.session for h in hosted],
                    [
                        # training results an earlier write did not take: this one is the last
                        *self.training.take_unwritten(),
                        *((sid, [("stopped", 0, {"reason": "shutdown"})]) for sid in stop),
                    ],
                )
                report["journaled"] = True
            except CandlerayError as exc:  # say so: a later host would resume these sessions
                report["journaled"] = False
                report["errors"].append(str(exc))
                log.error("host %d: the sessions' stops were not journaled: %s", self.index, exc)
            if self.runs is not None:
                for h in hosted:
                    self._end_run(h)
            self.sessions = {}
            self.closed = report
        # outside the lock: the writer may still be starting (a new process) or be behind
        report["runs_ended"] = None
        if self.runs is not None:
            flushed = self.runs.close(timeout_s)
            errors = self.runs.errors
            report["runs_ended"] = flushed and errors == 0
            if not flushed:
                report["errors"].append(
                    f"MLflow: the runs' writer did not finish within {timeout_s:.0f}s; runs may "
                    f"stay RUNNING ({self.runs.status()})"
                )
            elif errors:
                report["errors"].append(
                    f"MLflow: {errors} metric(s) or run end(s) not written ({self.runs.last_error})"
                )
        with self.lock:
            self.journal.close()
        return report
