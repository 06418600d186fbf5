"""The node holding a session host dies mid-replay: Ray restarts the host on another node, and
it resumes its session from the journal in the shared PostgreSQL (``run.database_url``): no
candle predicted twice or skipped, the metrics those of an uninterrupted run of the same
replay, and the session finishes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cluster_support import wait_for
from support import tiny_overrides

from pipelines.live import Journal

PROBE = str(Path(__file__).with_name("session_probe.py"))
CANDLES = 120  # the replay's length
SPEED = 6.0  # candles per second: ~20 s of replay, time to kill the node mid-way

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def probe(mn, overrides: list[str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, PROBE, mn.address, json.dumps(overrides), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stdout + out.stderr
    return json.loads(lines[-1])


def host_node(mn, name: str) -> str | None:
    from ray.util.state import list_actors

    alive = list_actors(
        address=mn.dashboard,
        filters=[("name", "=", name), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return alive[0].node_id if alive else None


def status(mn, overrides: list[str], sid: str) -> dict[str, Any] | None:
    return probe(mn, overrides, "status", sid).get("status")


def finished(mn, overrides: list[str], journal: Journal, sid: str) -> dict[str, Any]:
    """The session's status once it finished: every candle journaled (polled on the database,
    cheap), then the host's own word (a driver on the cluster, a few seconds each)."""
    wait_for(f"{sid}: every candle journaled", lambda: len(journal.candles(sid)) >= CANDLES, 240)

    def done() -> dict[str, Any] | None:
        st = status(mn, overrides, sid)
        return st if st is not None and st["state"] == "finished" else None

    return wait_for(f"{sid}: finished", done, 120)


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a user compares; NaN (no trade yet) as None so that it equals itself."""
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in metrics.items()
        if k != "session_id"
    }


def test_session_host_resumes_on_another_node_from_the_shared_journal(
    multi_node, postgres_url, tmp_path
):
    mn = multi_node
    mn.ensure_all()
    name = f"sh{uuid.uuid4().hex[:8]}"
    overrides = [
        *tiny_overrides(tmp_path, name),
        "model.device=cpu",
        f"run.database_url={postgres_url}",
        "live.hosts=1",
        "live.host_resources={host_slot: 0.01}",  # node_a or node_b (tests/cluster/conftest.py)
        "ray.actor_resources={node_c: 0.01}",  # the ModelActor away from the node we kill
        "ray.detached=true",  # the actors outlive the probe that made them
        f"ray.address={mn.address}",
    ]
    journal = Journal(postgres_url, name=f"{name}-host-0")
    try:
        # the uninterrupted reference: the same replay, at full speed, on the same host
        ref = probe(mn, overrides, "start", "0", str(CANDLES))["id"]
        ref_st = finished(mn, overrides, journal, ref)
        sid = probe(mn, overrides, "start", str(SPEED), str(CANDLES))["id"]
        node = wait_for("the host placed", lambda: host_node(mn, f"{name}-host-0"))
        names = {mn.node_id(n): n for n in mn.alive()}
        victim = names[node]
        assert victim in ("node_a", "node_b")
        wait_for(
            "a third of the replay journaled",
            lambda: len(journal.candles(sid)) >= CANDLES // 3,
            180,
        )
        mn.kill(victim)
        t_kill = time.monotonic()
        n_at_kill = len(journal.candles(sid))
        assert n_at_kill < CANDLES  # mid-replay

        def restarted_elsewhere() -> str | None:
            got = host_node(mn, f"{name}-host-0")
            return got if got is not None and got != node else None

        new_node = wait_for("the host restarted on another node", restarted_elsewhere, 240)
        assert names.get(new_node) not in (victim, "node_c")
        # the dead node's worker may outlive its raylet by a moment (a real node's does not):
        # what counts is the first candle after the new host is up
        seen = journal.last_time(sid)
        wait_for("the new host journaling", lambda: journal.last_time(sid) != seen, 240)
        resume_s = time.monotonic() - t_kill
        st = finished(mn, overrides, journal, sid)

        # each candle once, none skipped: the same candles, predictions and trades as the
        # uninterrupted run
        assert [c.time for c in journal.candles(sid)] == [c.time for c in journal.candles(ref)]
        made = [t for t, _ in journal.events(sid, "prediction")]
        assert made == [t for t, _ in journal.events(ref, "prediction")]
        assert len(made) == len(set(made)) > 0
        assert [d for _, d in journal.events(sid, "trade")] == [
            d for _, d in journal.events(ref, "trade")
        ]
        assert comparable(st["metrics"]) == comparable(ref_st["metrics"])
        assert st["metrics"]["candles"] == CANDLES
        # the journal lived on the database server, not on the dead node's (or any) disk
        assert not list(tmp_path.rglob("*.sqlite"))
        print(
            f"session host on {victim} lost after candle {n_at_kill} of {CANDLES}: "
            f"restarted on {names[new_node]}, journaling again {resume_s:.1f}s after the kill; "
            f"{st['metrics']['candles']} candles, {len(made)} predictions, each once"
        )
    finally:
        probe(mn, overrides, "stop")
        journal.close()
