"""Session hosts under faults: a hung training call, a host killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import time

import ray
from host_support import call, finished, hosts_for, journal_of, kill, wait_until

from actors import ModelCore, start_hosts


@ray.remote(concurrency_groups={"read": 2})
class HungModel:
    """Stands in for the ModelActor: publishes real weights, never finishes a training call."""

    def __init__(self, cfg) -> None:
        self.core = ModelCore(cfg)

    def train_batch(self, *args, **kwargs):
        time.sleep(3600)

    @ray.method(concurrency_group="read")
    def weights_version(self):
        return self.core.snapshot.generation, self.core.snapshot.version

    @ray.method(concurrency_group="read")
    def weights_snapshot(self):
        s = self.core.snapshot
        return {"generation": s.generation, "version": s.version, "ref": ray.put(s.state)}


def test_a_hung_training_call_times_out_and_sessions_keep_predicting(ray_cluster, make_cfg):
    cfg = make_cfg("live.hosts=1", "ray.call_timeout_s=2")
    fake = HungModel.options(name=cfg.run.name, namespace=cfg.ray.namespace, num_cpus=0.1).remote(
        cfg
    )
    ray.get(fake.weights_version.remote())
    _, (host,) = hosts_for(cfg)
    sid = call(
        host.start_session.remote("synthetic:SYN0", "1h", "every_candle", "replay", 20, -120)
    )["id"]
    wait_until(lambda: call(host.stats.remote())["timeouts"] >= 1, what="a timeout")
    st = call(host.status.remote(sid))
    wait_until(
        lambda: (
            call(host.status.remote(sid))["metrics"]["predictions"]
            >= st["metrics"]["predictions"] + 20
        ),
        what="predictions going on after the timeouts",
    )
    m = call(host.status.remote(sid))["metrics"]
    assert m["train_timeouts"] == 1 and m["train_done"] == 0
    assert m["train_requested"] == m["train_done"] + m["train_dropped"] + m["train_pending"]
    # the hung call keeps the slot: no batch per timeout piles up in the actor's mailbox
    assert call(host.stats.remote())["calls"] == 1
    outcomes = [d["outcome"] for _, d in journal_of(cfg).events(sid, "train_result")]
    assert outcomes.count("timeout") == 1
    call(host.shutdown.remote())
    kill(host)
    kill(fake)


def test_sigkill_of_a_host_resumes_its_sessions_from_the_journal(ray_cluster, make_cfg):
    cfg = make_cfg("live.hosts=1")
    _, (host,) = hosts_for(cfg)
    sid = call(
        host.start_session.remote("synthetic:SYN0", "1h", "every_candle", "replay", 25, -200)
    )["id"]
    wait_until(lambda: call(host.status.remote(sid))["metrics"]["candles"] >= 40)
    pid = call(host.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: _alive_with_new_pid(host, pid), timeout_s=120, what="Ray to restart the host"
    )
    wait_until(lambda: finished(host, [sid]), what="the resumed replay to finish")
    m = call(host.status.remote(sid))["metrics"]
    assert m["candles"] == 200 and m["predictions"] == 200 and m["missed"] == 0
    j = journal_of(cfg)
    preds = [t for t, _ in j.events(sid, "prediction")]
    assert len(preds) == len(set(preds)) == 200  # none twice, none skipped
    assert preds == sorted(preds)
    step = 3_600_000_000_000
    assert all(b - a == step for a, b in zip(preds, preds[1:], strict=False))
    call(host.shutdown.remote())
    kill(host)


def test_a_host_killed_for_good_leaves_its_sessions_to_no_later_run(ray_cluster, make_cfg):
    # the run died with its host (Ray does not restart it): the next run's new host is not a
    # restart, so it stops those sessions and says so instead of replaying them unseen
    cfg = make_cfg("live.hosts=1")
    client, (host,) = hosts_for(cfg)  # the client holds the ModelActor for the whole test
    sid = call(
        host.start_session.remote("synthetic:SYN0", "1h", "every_candle", "replay", 25, -200)
    )["id"]
    wait_until(lambda: call(host.status.remote(sid))["metrics"]["candles"] >= 10)
    kill(host)
    assert client.call("weights_version") is not None
    (again,) = start_hosts(cfg)
    assert call(again.list_sessions.remote()) == []
    assert call(again.stats.remote())["not_resumed"] == [sid]
    assert journal_of(cfg).stopped(sid)
    call(again.shutdown.remote())
    kill(again)


def _alive_with_new_pid(host, old: int) -> bool:
    try:
        return ray.get(host.pid.remote(), timeout=5) != old
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False
