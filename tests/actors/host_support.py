"""Helpers of the session-host tests: start a model's hosts, wait for replays, read the journal."""

from __future__ import annotations

import time

import ray

from actors import ModelClient, host_call, start_hosts
from actors.session_host import host_journal


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
