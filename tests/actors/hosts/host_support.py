"""Helpers of the session-host tests: start a model's hosts, wait for replays, read the journal;
a HostCore without Ray (a fake model, instant training)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import ray

from actors import ModelClient, host_call, start_hosts
from actors.hosts.host import host_journal


def hosts_for(cfg):
    client = ModelClient.connect(cfg)
    client.call("weights_version")  # the actor is up before the hosts ask it
    return client, start_hosts(cfg)


def call(ref, timeout_s: float = 60.0):
    return host_call(ref, "a test call", timeout_s)


def wait_until(pred, timeout_s: float = 90.0, every_s: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def finished(host, ids) -> bool:
    """True once every listed session has played its replay and its queue has drained."""
    st = {s["id"]: s for s in call(host.list_sessions.remote())}
    stats = call(host.stats.remote())
    return (
        all(st[i]["state"] == "finished" for i in ids)
        and stats["pending"] == 0
        and not stats["in_flight"]
    )


def journal_of(cfg, index: int = 0):
    return host_journal(cfg, index)


def kill(actor) -> None:
    ray.kill(actor, no_restart=True)


class FakePredictor:
    """A Predictor stand-in for a HostCore without Ray: weights loaded (generation g0), and
    every window predicted flat with a confident HOLD."""

    version, generation = 1, "g0"

    def predict(self, x, batch_size: int = 256):
        import numpy as np

        n = len(x)
        probs = np.tile(np.array([0.8, 0.1, 0.1], dtype=np.float32), (n, 1))
        return SimpleNamespace(candle=np.zeros((n, 5), np.float32), probs=probs, version=1)

    def load(self, state, version, generation) -> None:
        self.version, self.generation = version, generation


class InstantTraining:
    """TrainCalls whose every call answers done at once; ``samples`` counts what was sent."""

    def __init__(self) -> None:
        self.samples = 0

    def submit(self, x, y_candle, y_action):
        self.samples += len(x)
        return self.samples

    def poll(self, handle):
        return "done", {"total_loss": 1.0}


def host_core(cfg, journal=None, runs=None, calls=None):
    """A HostCore as SessionHost builds it, without Ray (fake model, instant training)."""
    from actors.hosts.core import HostCore

    return HostCore(
        cfg,
        0,
        FakePredictor(),
        calls or InstantTraining(),
        journal or host_journal(cfg, 0),
        clock=time.monotonic,
        runs=runs,
    )
