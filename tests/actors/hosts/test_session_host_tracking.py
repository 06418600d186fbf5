"""Session hosts with MLflow tracking on: one run per session, metrics by candle, one writer
per host in a process of its own, so tracking does not slow the host's predictions."""

from __future__ import annotations

import os
import threading
import time

import ray
from host_support import call, finished, hosts_for, kill, wait_until
from mlflow.tracking import MlflowClient

from actors import assign_host, spec_from_config
from actors.hosts.core import HostCore
from actors.hosts.host import host_journal, host_name
from actors.hosts.runs_writer import RayRunsSink
from actors.hosts.tracking import SESSION_TAG, SessionRuns
from serve.predictor import Predictor

CANDLES = 60


def test_each_session_has_one_run_with_metrics_by_candle(ray_cluster, make_cfg):
    # two hosts and a training ModelActor all write to the one sqlite store of run.home
    cfg = make_cfg("live.hosts=2", "tracking.enabled=true")
    client, hosts = hosts_for(cfg)
    loads = [0] * len(hosts)
    ids = []
    for k, mode in enumerate(("every_candle", "every_candle", "none", "pivots_only")):
        sym = f"synthetic:SYN{k}"
        i = assign_host(sym, loads)
        loads[i] += 1
        ids.append(
            (i, call(hosts[i].start_session.remote(sym, "1h", mode, "replay", 0, -CANDLES))["id"])
        )
    for i, h in enumerate(hosts):
        mine = [sid for j, sid in ids if j == i]
        wait_until(lambda h=h, mine=mine: finished(h, mine), what="the replays to finish")
    metrics = {sid: call(hosts[i].status.remote(sid))["metrics"] for i, sid in ids}
    stats = [call(h.stats.remote()) for h in hosts]
    # ends each session's run, flushing what is buffered; on a fresh, loaded machine the
    # writer's process (MLflow's import, the store's creation) may take a while: a generous
    # deadline, and the report says whether the runs ended within it
    reports = [call(h.shutdown.remote(240.0), timeout_s=300.0) for h in hosts]
    for r in reports:
        assert r["journaled"] and r["runs_ended"] is True and r["errors"] == [], r
    assert [s["mlflow_errors"] for s in stats] == [0, 0]  # no "database is locked", nothing lost
    assert sum(s["done"] for s in stats) > 0  # the actor trained (and logged) meanwhile

    ml = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = ml.get_experiment_by_name(f"{cfg.run.name}-live")
    assert exp is not None
    runs = ml.search_runs([exp.experiment_id])
    by_session = {r.data.tags.get(SESSION_TAG): r for r in runs}
    assert len(runs) == len(ids) and set(by_session) == {sid for _, sid in ids}
    for _, sid in ids:
        run, m = by_session[sid], metrics[sid]
        assert run.info.status == "FINISHED" and run.info.run_name == sid
        # step = candles the session has taken: one point per candle, every one predicted
        preds = ml.get_metric_history(run.info.run_id, "predictions")
        assert [p.step for p in sorted(preds, key=lambda p: p.step)] == list(range(1, CANDLES + 1))
        assert [p.value for p in sorted(preds, key=lambda p: p.step)] == list(
            map(float, range(1, CANDLES + 1))
        )
        # direction accuracy exists from the first settled candle on: one point per settlement
        acc = ml.get_metric_history(run.info.run_id, "direction_acc")
        assert len(acc) == m["settled"] == CANDLES - 1
        assert run.data.metrics["train_done"] == m["train_done"]
    for h in hosts:
        kill(h)


class NoTraining:
    """Sessions in mode ``none`` never train: a call here would be a bug."""

    def submit(self, *args):
        raise AssertionError("mode none must not train")

    def poll(self, handle):
        raise AssertionError("mode none must not train")


class HeldAnswers:
    """The real writer (``RayRunsSink``, an actor of its own), whose answers reach the host
    only once the test sets ``release``: to the host, a store that takes as long as the test
    wants. ``sent`` counts the hand-offs."""

    def __init__(self, sink: RayRunsSink) -> None:
        self.sink, self.release, self.sent = sink, threading.Event(), 0

    def submit(self, batch):
        self.sent += 1
        return self.sink.submit(batch)

    def poll(self, handle):
        return self.sink.poll(handle) if self.release.is_set() else None


def test_the_host_loop_never_waits_for_mlflow_whose_writer_has_a_process_of_its_own(
    ray_cluster, make_cfg
):
    """Tracking must not slow predictions: the host's loop only appends rows, and MLflow's
    Python runs in the writer's process, never taking the host's GIL. So: while the writer's
    first answer is held back, the loop goes on predicting every session's candles; the writer
    is not this (the host's) process; once it answers, every candle is in MLflow by step.
    (How much tracking costs the loop in milliseconds: bench/live_latency.py --tracking.)"""
    cfg = make_cfg("tracking.enabled=true", "data.synthetic.length=600")
    writer = f"{host_name(cfg, 0)}-mlflow"
    sink = HeldAnswers(
        RayRunsSink(cfg.tracking.uri, f"{cfg.run.name}-live", writer, cfg.ray.namespace)
    )
    runs = SessionRuns(sink, interval_s=0.05)
    predictor = Predictor(spec_from_config(cfg), "cpu")
    predictor.load(predictor.model.state_dict(), 0, "g0")
    core = HostCore(
        cfg, 0, predictor, NoTraining(), host_journal(cfg, 0), clock=time.monotonic, runs=runs
    )
    ids = [
        core.start_session(f"synthetic:SYN{k}", "1h", "none", "replay", 0, -CANDLES * 4)["id"]
        for k in range(4)
    ]

    def predictions() -> list[int]:
        return [core.status(sid)["metrics"]["predictions"] for sid in ids]

    def drive(until, what: str) -> None:  # the loop as SessionHost runs it, until a condition
        deadline = time.monotonic() + 120  # a hang guard only, for a loaded machine
        while not until():
            assert time.monotonic() < deadline, f"waited 120 s for {what}"
            core.step()

    drive(lambda: runs.status()["in_flight_s"] is not None, "the first hand-off")
    held = predictions()
    drive(lambda: min(predictions()) >= min(held) + CANDLES, f"{CANDLES} more predictions")
    # the loop took them with the writer's first answer still held: it never waited on it
    assert sink.sent == 1 and runs.status()["batches"] == 0, runs.status()
    pid = ray.get(
        ray.get_actor(writer, namespace=cfg.ray.namespace).__ray_call__.remote(
            lambda actor: os.getpid()
        ),
        timeout=120,
    )
    assert pid != os.getpid(), "MLflow writes in the host's process: it takes the loop's GIL"

    sink.release.set()
    drive(lambda: all(core.status(sid)["state"] == "finished" for sid in ids), "the replays")
    report = core.close(timeout_s=240.0)
    assert report["runs_ended"] is True and report["errors"] == [], report
    assert runs.status()["errors"] == 0 and runs.status()["batches"] >= 2, runs.status()
    ml = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = ml.get_experiment_by_name(f"{cfg.run.name}-live")
    found = ml.search_runs([exp.experiment_id])
    assert len(found) == 4 and all(r.info.status == "FINISHED" for r in found), [
        (r.info.status, r.info.run_name) for r in found
    ]
    for r in found:  # every candle of every session, by step, none lost while held
        steps = sorted(m.step for m in ml.get_metric_history(r.info.run_id, "predictions"))
        assert steps == list(range(1, CANDLES * 4 + 1))
