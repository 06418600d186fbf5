"""The node holding the ModelActor dies mid-training: the running ``candleray train`` stops with
an error that says how many steps were applied, and the actor restarts on another node from its
checkpoints on S3, losing at most ``checkpoint.every_steps`` of them; a client that finds it by
name reaches the new one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cluster_support import Command, wait_for
from support import tiny_overrides

PROBE = str(Path(__file__).with_name("model_probe.py"))
EVERY = 4  # checkpoint.every_steps

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def probe(mn, overrides: list[str], *extra: str) -> dict[str, Any]:
    """The named actor's metrics, asked from another driver on the cluster."""
    out = subprocess.run(
        [sys.executable, PROBE, mn.address, json.dumps(overrides), *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stdout + out.stderr
    return json.loads(lines[-1])


def actor_node(mn, name: str) -> str | None:
    """The node id of the live actor ``name``, from the state API."""
    from ray.util.state import list_actors

    alive = list_actors(
        address=mn.dashboard,
        filters=[("name", "=", name), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return alive[0].node_id if alive else None


def checkpoint_steps(uri: str) -> list[int]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    names = fs.find(root) if fs.exists(root) else []
    return sorted(int(m.group(1)) for n in names if (m := re.search(r"step(\d+)", n)))


def test_model_actor_restarts_on_another_node_from_s3(multi_node, s3_bucket, tmp_path):
    mn = multi_node
    if len(mn.alive()) < 2:
        mn.ensure_all()
    name = f"mn{uuid.uuid4().hex[:8]}"
    overrides = [
        *tiny_overrides(tmp_path, name),
        "model.device=cpu",
        f"checkpoint.uri={s3_bucket.url}/{name}",  # not run.home: that is this machine's disk
        f"checkpoint.every_steps={EVERY}",
        "checkpoint.on_best=false",
        "train.batches_per_call=2",
        "train.epochs=200",  # far more than the test lets it run
        "ray.detached=true",  # the actor outlives the command, so its restart can be watched
        f"ray.address={mn.address}",
    ]
    train = Command(["train", *overrides])
    try:
        node = wait_for("the ModelActor placed on a node", lambda: actor_node(mn, name))
        names = {mn.node_id(n): n for n in mn.alive()}
        victim = names[node]
        uri = f"{s3_bucket.url}/{name}/{name}"
        wait_for(
            f"checkpoints past step {2 * EVERY}",
            lambda: any(s >= 2 * EVERY for s in checkpoint_steps(uri)),
        )
        mn.kill(victim)
        t_kill = time.monotonic()
        assert train.wait() != 0
        applied = re.search(r"(\d+) step\(s\) of this run were applied", train.text)
        assert applied, train.text  # the error says what was applied
        n_applied = int(applied.group(1))
        assert f"ModelActor {name!r} died during train_samples" in train.text

        def restarted() -> dict[str, Any] | None:
            got = probe(mn, overrides)
            return got.get("metrics")

        metrics = wait_for("the restarted actor's answer", restarted, timeout=180)
        recover_s = time.monotonic() - t_kill
        new_node = actor_node(mn, name)
        assert new_node is not None and names.get(new_node) != victim
        restored = metrics["restored_from"]
        assert restored is not None and restored >= 2 * EVERY
        assert metrics["steps"] == restored  # nothing trained since: the checkpoint's state
        assert n_applied - restored <= EVERY, (n_applied, restored)
        print(
            f"ModelActor on {victim} lost: the command reported {n_applied} steps applied, the "
            f"actor restarted on {names[new_node]} from step {restored} on S3 (at most "
            f"{max(0, n_applied - restored)} of them lost), answering {recover_s:.0f}s after the kill"
        )
    finally:
        train.stop()
        probe(mn, overrides, "--kill")
