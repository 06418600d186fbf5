"""What a user sees in MLflow after training through the ModelActor: sqlite and a real server."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient
from support import free_port

from actors import ModelClient, spec_from_config

pytestmark = [pytest.mark.ray]


def train_and_flush(cfg, steps=30):
    client = ModelClient.connect(cfg)
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, spec.window, spec.n_features)).astype(np.float32)
    yc, ya = rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 3, 16)
    for _ in range(steps):
        client.call("train_batch", x, yc, ya, "batch")
    client.call("save_checkpoint", "batch")
    client.call("log_evaluation", {"holdout_dir_acc": 0.6})
    status = client.call("flush_tracking")
    assert client.call("close")["pending"] == 0
    ray.kill(client.handle, no_restart=True)
    return status


def check_run(uri: str, cfg, status) -> None:
    assert status["enabled"] and status["errors"] == 0 and status["pending"] == 0, status
    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = mc.get_experiment_by_name(cfg.run.name)
    assert exp is not None  # one experiment per model name
    run = mc.get_run(status["run_id"])
    assert run.data.params["model.d_model"] == str(cfg.model.d_model)
    assert run.data.params["train.batch_size"] == str(cfg.train.batch_size)
    assert run.data.tags["candleray.code_version"]
    for key in (
        "total_loss",
        "candle_loss",
        "action_loss",
        "candle_accuracy",
        "action_accuracy",
        "lr",
    ):
        hist = mc.get_metric_history(run.info.run_id, key)
        assert [m.step for m in hist] == list(range(1, 31)), key
        assert all(np.isfinite(m.value) for m in hist)
    assert run.data.metrics["holdout_dir_acc"] == 0.6
    arts = {a.path for a in mc.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "config"} <= arts
    ckpts = [a.path for a in mc.list_artifacts(run.info.run_id, "checkpoints")]
    assert any("-step000000020-" in p for p in ckpts)  # every_steps=10, keep_last=3
    best = mc.get_model_version_by_alias(cfg.run.name, "best")
    assert best.run_id == run.info.run_id
    assert run.info.status == "FINISHED"


def test_actor_metrics_checkpoints_and_best_in_sqlite_store(ray_cluster, make_cfg):
    cfg = make_cfg("tracking.enabled=true", "checkpoint.every_steps=10", "train.trend_window=10")
    check_run(cfg.tracking.uri, cfg, train_and_flush(cfg))


@pytest.mark.slow
def test_actor_against_a_real_mlflow_server(ray_cluster, make_cfg, server_uri):
    cfg = make_cfg(
        "tracking.enabled=true",
        f"tracking.uri={server_uri}",
        "checkpoint.every_steps=10",
        "train.trend_window=10",
    )
    check_run(server_uri, cfg, train_and_flush(cfg))


def batch(cfg, n=8):
    spec, rng = spec_from_config(cfg), np.random.default_rng(0)
    return (
        rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32),
        rng.integers(0, 3, n),
    )


def starts_trains_and_reports(cfg) -> dict:
    """The actor starts, trains and answers flush_tracking, each call within its deadline
    (ray.call_timeout_s: a call past it raises), whatever the store does."""
    client = ModelClient.connect(cfg)
    try:
        client.call("metrics", timeout_s=60)  # the actor's process start, not MLflow's
        assert client.call("train_batch", *batch(cfg))["step"] == 1
        status = client.call("flush_tracking")
        deadline = time.monotonic() + 60
        while status["state"] == "starting" and time.monotonic() < deadline:
            status = client.call("flush_tracking")  # the writer's own process is still starting
        return status
    finally:
        ray.kill(client.handle, no_restart=True)


def test_actor_starts_and_trains_while_the_store_is_down(ray_cluster, make_cfg):
    cfg = make_cfg(
        "tracking.enabled=true",
        f"tracking.uri=http://127.0.0.1:{free_port()}",
        "ray.call_timeout_s=20",  # generous: a loaded machine; flush waits half of it
    )
    status = starts_trains_and_reports(cfg)
    assert status["state"] == "opening" and status["pending"] >= 1, status
    assert status["open_failures"] >= 1 and "127.0.0.1" in status["last_error"]


def test_actor_starts_and_flushes_in_time_while_the_store_never_answers(ray_cluster, make_cfg):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cfg = make_cfg(
            "tracking.enabled=true",
            f"tracking.uri=http://127.0.0.1:{silent.getsockname()[1]}",
            "ray.call_timeout_s=20",  # generous: a loaded machine; flush waits half of it
        )
        status = starts_trains_and_reports(cfg)
    assert status["state"] == "opening" and status["pending"] >= 1, status


def test_actor_rewind_reports_the_new_run(ray_cluster, make_cfg):
    """Through the process writer: after a rewind the actor names the run its steps go to."""
    cfg = make_cfg(
        "tracking.enabled=true",
        "checkpoint.every_steps=2",
        "checkpoint.on_best=false",
        "tracking.register_best=false",
        "tracking.log_checkpoints=false",
    )
    client = ModelClient.connect(cfg)
    try:
        for _ in range(4):
            client.call("train_batch", *batch(cfg))
        old = client.call("flush_tracking", timeout_s=60)["run_id"]
        client.call("load_checkpoint", client.call("list_checkpoints")[0]["path"])  # step 2
        client.call("train_batch", *batch(cfg))  # step 3 again
        deadline = time.monotonic() + 60
        while (status := client.call("flush_tracking"))["pending"] and time.monotonic() < deadline:
            pass
        client.call("train_batch", *batch(cfg))  # step 4, published with the run it went to
        named = client.call("metrics")["mlflow_run_id"]
        client.call("close")
    finally:
        ray.kill(client.handle, no_restart=True)
    assert status["state"] == "open" and status["errors"] == 0, status
    assert status["run_id"] != old and named == status["run_id"]
    mc = MlflowClient(tracking_uri=cfg.tracking.uri)
    assert [m.step for m in mc.get_metric_history(named, "total_loss")] == [3, 4]
    assert mc.get_run(named).data.tags["candleray.previous_run"] == old
