"""The ModelActor with ``checkpoint.uri=s3://…`` (the README's cluster recipe) on a real S3
server: checkpoints land in the bucket, a restarted actor restores from them, an MLflow server
with S3 artifacts receives the checkpoints, and a bad bucket is a clear error."""

from __future__ import annotations

import time
import uuid

import boto3
import numpy as np
import pytest
import ray

from actors import ModelClient, spec_from_config
from pipelines.errors import CandlerayError

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def keys(bucket, prefix: str) -> list[str]:
    s3 = boto3.Session().client("s3", endpoint_url=bucket.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def batch(cfg, n=16):
    spec, rng = spec_from_config(cfg), np.random.default_rng(0)
    return (
        rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32),
        rng.integers(0, 3, n),
    )


def test_actor_checkpoints_to_s3_and_a_restart_restores_from_there(
    ray_cluster, make_cfg, s3_bucket
):
    prefix = f"ckpt-{uuid.uuid4().hex[:8]}"
    cfg = make_cfg(
        f"checkpoint.uri={s3_bucket.url}/{prefix}", "checkpoint.every_steps=5", "ray.max_restarts=2"
    )
    client = ModelClient.connect(cfg)
    try:
        for _ in range(12):
            client.call("train_batch", *batch(cfg))
        before = client.call("metrics")
        assert before["steps"] == 12
        stored = [k for k in keys(s3_bucket, f"{prefix}/{cfg.run.name}/") if "/.mlflow" not in k]
        assert any("-step000000010-" in k and k.endswith(".pt") for k in stored), stored
        assert any("-step000000010-" in k and k.endswith(".json") for k in stored), stored

        ray.kill(client.handle, no_restart=False)  # Ray restarts it, as after a node loss
        deadline = time.monotonic() + 120  # a hang guard: a loaded machine restarts it slowly
        while True:
            try:
                after = client.call("metrics", timeout_s=10)
                if after["generation"] != before["generation"]:
                    break
            except Exception:
                pass  # calls fail until it is back
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.5)
        # restored from the bucket: only the 2 steps after the last checkpoint are lost
        assert after["restored_from"] == 10 and after["steps"] == 10
        assert client.call("train_batch", *batch(cfg))["step"] == 11
    finally:
        ray.kill(client.handle, no_restart=True)


def test_actor_with_a_missing_bucket_says_which_setting_and_how_to_fix_it(ray_cluster, make_cfg):
    cfg = make_cfg("checkpoint.uri=s3://no-such-bucket/ckpt", "ray.max_restarts=0")
    with pytest.raises(CandlerayError) as info:
        ModelClient.connect(cfg).call("metrics")
    msg = str(info.value)
    assert "checkpoint.uri=s3://no-such-bucket/ckpt" in msg and "create the bucket" in msg
    assert "could not start" in msg and "the bucket does not exist" in msg


def test_mlflow_server_with_s3_artifacts_receives_the_checkpoints(
    ray_cluster, make_cfg, s3_bucket, s3_server_uri
):
    prefix = f"ckpt-{uuid.uuid4().hex[:8]}"
    cfg = make_cfg(
        f"checkpoint.uri={s3_bucket.url}/{prefix}",
        "tracking.enabled=true",
        f"tracking.uri={s3_server_uri}",
        "checkpoint.every_steps=10",
        "train.trend_window=10",
    )
    client = ModelClient.connect(cfg)
    try:
        for _ in range(20):
            client.call("train_batch", *batch(cfg))
        status = client.call("flush_tracking")
        assert status["errors"] == 0 and status["pending"] == 0, status
        assert client.call("close")["pending"] == 0
    finally:
        ray.kill(client.handle, no_restart=True)
    run_id = status["run_id"]
    artifacts = [k for k in keys(s3_bucket, "mlflow/") if f"/{run_id}/artifacts/" in k]
    uploaded = [k for k in artifacts if "/checkpoints/" in k and k.endswith(".pt")]
    assert any("-step000000020-" in k for k in uploaded), artifacts
    # the uploads were staged in the bucket and the stages removed afterwards
    assert not [k for k in keys(s3_bucket, f"{prefix}/") if "/.mlflow-uploads/" in k]
