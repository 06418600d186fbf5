"""The ModelActor's contract: serialized training, snapshots, deadlines, bad input, recovery."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import ray

from actors import ModelClient, spec_from_config
from pipelines.data.dataset import Dataset
from pipelines.errors import ActorCallTimeout, CandlerayError, InvalidInputError
from serve.predictor import Predictor

pytestmark = [pytest.mark.ray]


def arrays(spec, b=8, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((b, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((b, 5)).astype(np.float32),
        rng.integers(0, 3, b),
    )


def dataset(spec, n, seed=0):
    x, yc, ya = arrays(spec, n, seed)
    return Dataset(x, yc, ya)


def kill(client):
    for _ in range(3):
        try:
            ray.kill(client.handle, no_restart=True)
            return
        except Exception:
            time.sleep(0.5)


@ray.remote(num_cpus=0.1)
def train_from_task(handle, x, yc, ya, n):
    return [ray.get(handle.train_batch.remote(x, yc, ya, "task"))["step"] for _ in range(n)]


def test_200_concurrent_train_calls_are_serialized_while_predictions_go_on(ray_cluster, make_cfg):
    cfg = make_cfg("checkpoint.every_steps=1000")
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    x, yc, ya = arrays(spec)
    predictor = Predictor(spec, "cpu")
    predictor.refresh(client)
    errors: list[BaseException] = []
    steps: list[int] = []

    def worker(n):
        try:
            steps.extend(client.call("train_batch", x, yc, ya, "thread")["step"] for _ in range(n))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(25,)) for _ in range(4)]  # 100 from threads
    for t in threads:
        t.start()
    task_refs = [
        train_from_task.remote(client.handle, x, yc, ya, 25) for _ in range(4)
    ]  # 100 from tasks
    answered, versions = 0, set()
    while (
        any(t.is_alive() for t in threads)
        or ray.wait(task_refs, num_returns=len(task_refs), timeout=0)[1]
    ):
        predictor.refresh(client)
        p = predictor.predict(x)
        assert np.isfinite(p.probs).all() and np.isfinite(p.candle).all()
        answered += 1
        versions.add(p.version)
    for t in threads:
        t.join()
    task_steps = [s for r in ray.get(task_refs) for s in r]
    assert not errors, errors
    all_steps = sorted(steps + task_steps)
    assert all_steps == list(range(1, 201))  # every call got its own step: none lost, none doubled
    m = client.call("metrics")
    assert m["steps"] == 200 and m["version"] == 200
    assert all(np.isfinite(v) for v in m["current"].values())
    assert answered >= 5 and len(versions) >= 2  # predictions kept coming, from newer snapshots
    kill(client)


def test_bad_batch_is_refused_and_the_weights_version_is_unchanged(ray_cluster, make_cfg):
    cfg = make_cfg()
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    x, yc, ya = arrays(spec)
    client.call("train_batch", x, yc, ya)
    before = client.call("weights_version")
    snap = ray.get(client.call("weights_snapshot")["ref"])
    bad_x = x.copy()
    bad_x[2, 3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        client.call("train_batch", bad_x, yc, ya)
    with pytest.raises(InvalidInputError, match="shape"):
        client.call("train_batch", x[:, :, :2], yc, ya)
    ds = dataset(spec, 40)
    ds.y_candle[37] = np.inf  # one bad sample in a long call: nothing of the call is applied
    with pytest.raises(InvalidInputError):
        client.call("train_samples", ds, None, 8)
    assert client.call("weights_version") == before
    after = ray.get(client.call("weights_snapshot")["ref"])
    assert all(np.array_equal(after[k].numpy(), snap[k].numpy()) for k in snap)
    assert client.call("metrics")["steps"] == 1
    kill(client)


def test_deadline_names_the_call_and_reads_still_answer(ray_cluster, make_cfg):
    cfg = make_cfg()
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    client.call("metrics")  # actor is up
    # 32,000 steps: the call runs until the test kills the actor
    ref = client.submit("train_epochs", dataset(spec, 256), 1000, 8)
    with pytest.raises(ActorCallTimeout, match=r"train_epochs.*within 0\.2s"):
        client.wait(ref, "train_epochs", timeout_s=0.2)
    m = client.call("metrics", timeout_s=60)  # read group: does not queue behind training
    running, _ = ray.wait([ref], timeout=0)
    assert "steps" in m and not running, "metrics answered only after the training call"
    kill(client)


def test_the_tracking_status_answers_while_a_training_call_runs(ray_cluster, make_cfg, tmp_path):
    """GET /health reads it: it must never queue behind training (nor flush or register)."""
    cfg = make_cfg(
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.log_checkpoints=false",
    )
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    client.call("metrics")  # actor is up
    ref = client.submit("train_epochs", dataset(spec, 256), 500, 8)  # minutes of training
    deadline = time.monotonic() + 120
    while client.call("metrics", timeout_s=30)["steps"] == 0:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    status = client.call("tracking_status", timeout_s=60)
    assert status["enabled"] and "pending" in status and "errors" in status, status
    ready, _ = ray.wait([ref], timeout=0)
    assert not ready, "the status came only after the training call"
    kill(client)


def test_sigkill_restarts_and_resumes_from_the_last_checkpoint(ray_cluster, make_cfg):
    cfg = make_cfg("checkpoint.every_steps=5", "ray.max_restarts=2")
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    x, yc, ya = arrays(spec)
    for _ in range(12):
        client.call("train_batch", x, yc, ya)
    m = client.call("metrics")
    assert m["steps"] == 12
    ckpt_steps = [c["step"] for c in client.call("list_checkpoints")]
    assert ckpt_steps[-1] == 10
    os.kill(m["pid"], signal.SIGKILL)
    deadline = time.time() + 120  # a hang guard: a loaded machine restarts it slowly
    while True:  # Ray restarts the actor; calls fail until it is back
        try:
            m2 = client.call("metrics", timeout_s=10)
            if m2["pid"] != m["pid"]:
                break
        except Exception:
            pass
        assert time.time() < deadline, "actor did not come back"
        time.sleep(0.5)
    assert (
        m2["steps"] == 10 and m2["restored_from"] == 10
    )  # lost only the 2 steps after the checkpoint
    assert m2["generation"] != m["generation"]
    out = client.call("train_batch", x, yc, ya)
    assert out["step"] == 11
    kill(client)


def test_checkpoint_save_list_load_through_the_actor(ray_cluster, make_cfg):
    cfg = make_cfg("checkpoint.every_steps=1000")
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    x, yc, ya = arrays(spec)
    client.call("train_batch", x, yc, ya)
    first = client.call("save_checkpoint", "manual")
    w1 = ray.get(client.call("weights_snapshot")["ref"])
    for _ in range(3):
        client.call("train_batch", x, yc, ya)
    assert [c["step"] for c in client.call("list_checkpoints")] == [1]
    out = client.call("load_checkpoint", first["path"])
    assert out["step"] == 1
    snap = client.call("weights_snapshot")
    assert snap["version"] == 1
    w = ray.get(snap["ref"])
    assert all(np.array_equal(w[k].numpy(), w1[k].numpy()) for k in w1)
    predictor = Predictor(spec, "cpu")
    predictor.refresh(client)
    for _ in range(3):  # back at step 4, with other weights than the first step 4
        client.call("train_batch", x, yc, ya)
    assert predictor.refresh(client)  # a new version: the predictor reloads
    kill(client)


def test_actor_that_cannot_start_says_why(ray_cluster, make_cfg):
    cfg = make_cfg()
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    client.call("train_batch", *arrays(spec))
    client.call("save_checkpoint")
    kill(client)
    other = make_cfg(
        "model.d_model=16", "model.dim_feedforward=128", "ray.max_restarts=0", name=cfg.run.name
    )
    with pytest.raises(CandlerayError, match=r"could not start.*another run\.name"):
        ModelClient.connect(other).call("metrics")
