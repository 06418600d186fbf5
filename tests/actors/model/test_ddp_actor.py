"""A data-parallel ModelActor (train.workers=2): a rank's death fails the call with what was
applied and the next call trains; live-session steps beside a batch run are all counted."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from actors import ModelClient, spec_from_config
from pipelines.data.dataset import Dataset, Split
from pipelines.errors import PartialTrainingError
from pipelines.jobs.training import train_split

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TWO_RANKS = ("train.workers=2", "train.worker_num_cpus=0.5", "checkpoint.every_steps=1000")


def dataset(spec, n, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(
        rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32),
        rng.integers(0, 3, n),
    )


def rank_pids(cfg) -> dict[int, int]:
    """rank -> pid of the model's live ranks (named ``<run.name>.rank<i>.<group>``)."""
    prefix = f"{cfg.run.name}.rank"
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == cfg.ray.namespace and a["name"].startswith(prefix):
            try:
                pid = ray.get(ray.get_actor(a["name"], a["namespace"]).pid.remote(), timeout=30)
            except (ValueError, ray.exceptions.RayActorError):
                continue  # gone since it was listed
            out[int(a["name"][len(prefix) :].split(".")[0])] = pid
    return out


def wait_for(what, check, timeout_s=180.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"hang guard: {what}"
        time.sleep(0.2)


def test_a_rank_killed_or_hung_mid_train_epochs_fails_the_call_with_what_was_applied(
    ray_cluster, make_cfg
):
    cfg = make_cfg(*TWO_RANKS, "tracking.log_every_steps=1")
    client = ModelClient.connect(cfg)
    try:
        spec = spec_from_config(cfg)
        data = dataset(spec, 320)
        first16 = (data.x[:16], data.y_candle[:16], data.y_action[:16])
        ref = client.submit("train_epochs", data, 100)  # 2000 steps: far more than it gets to
        wait_for("3 steps trained", lambda: client.call("metrics")["steps"] >= 3)
        pids = wait_for("two ranks listed", lambda: (p := rank_pids(cfg)) and len(p) == 2 and p)
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(PartialTrainingError) as err:
            client.wait(ref, "train_epochs", timeout_s=180)
        e = err.value
        assert e.steps_applied >= 3 and e.version == e.steps_applied  # it started at step 0
        assert f"after {e.steps_applied} step(s)" in str(e)
        assert "rank" in str(e)  # the cause: a rank died
        # what is published is exactly what the error reports
        assert client.call("weights_version")[1] == e.version
        assert client.call("metrics")["steps"] == e.version
        # the next call rebuilds the group and trains on from there
        out = client.call("train_batch", *first16, timeout_s=180)  # builds a new group
        assert out["version"] == e.version + 1 and np.isfinite(out["total_loss"])
        snap = client.call("weights_snapshot")
        assert all(bool(np.isfinite(v.numpy()).all()) for v in ray.get(snap["ref"]).values())
        assert pids[1] not in rank_pids(cfg).values()
        # a rank that hangs (stopped) fails the call after the step deadline, the same way
        start = out["version"]
        ref = client.submit("train_epochs", data, 100)
        wait_for("3 more steps", lambda: client.call("metrics")["steps"] >= start + 3)
        os.kill(rank_pids(cfg)[0], signal.SIGSTOP)
        with pytest.raises(PartialTrainingError) as err:
            client.wait(ref, "train_epochs", timeout_s=180)
        assert "hangs" in str(err.value) and err.value.version == start + err.value.steps_applied
        assert client.call("weights_version")[1] == err.value.version
        out = client.call("train_batch", *first16, timeout_s=180)  # builds a new group
        assert out["version"] == err.value.version + 1
    finally:
        ray.kill(client.handle, no_restart=True)


def test_live_steps_beside_a_two_rank_batch_run_are_each_applied_once(ray_cluster, make_cfg):
    cfg = make_cfg(*TWO_RANKS, "train.batches_per_call=2", "train.epochs=3")
    client = ModelClient.connect(cfg)
    try:
        spec = spec_from_config(cfg)
        data = dataset(spec, 96)  # 6 batches of 16 an epoch, 2 per call
        # the group starts first (slow on a loaded machine), so the calls below only queue
        client.call(
            "train_batch", data.x[:16], data.y_candle[:16], data.y_action[:16], timeout_s=180
        )
        batch_run: dict[str, object] = {}

        def run() -> None:
            try:
                batch_run["epochs"] = train_split(client, Split(data, data, {}), cfg)
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                batch_run["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        # one-candle steps, as live sessions send them (actors.hosts.host), while it runs
        live = [
            client.call(
                "train_batch",
                data.x[i : i + 1],
                data.y_candle[i : i + 1],
                data.y_action[i : i + 1],
                kind="live",
                timeout_s=180,  # a hang guard: each waits for the batch run's call in flight
            )
            for i in range(8)
        ]
        thread.join(timeout=300)
        assert not thread.is_alive(), "hang guard: the batch run did not finish"
        assert "error" not in batch_run, batch_run.get("error")
        batch_steps = sum(r.steps for r in batch_run["epochs"])  # type: ignore[attr-defined]
        assert batch_steps == 3 * 6
        assert all(m["samples"] == 1.0 for m in live)
        versions = [m["version"] for m in live]
        assert len(set(versions)) == 8  # each its own step, none lost or merged
        assert client.call("metrics")["steps"] == 1 + batch_steps + 8
        assert client.call("weights_version")[1] == 1 + batch_steps + 8
    finally:
        ray.kill(client.handle, no_restart=True)
