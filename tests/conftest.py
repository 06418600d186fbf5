"""Shared fixtures: one local Ray cluster per test session, configs in temp folders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    # num_cpus is logical: the ModelActors take 0.5 each, so several fit beside test tasks
    ray.init(num_cpus=4, include_dashboard=False, namespace="candleray-tests", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., object]:
    """``make_cfg("train.batch_size=8", ...)`` → a resolved Config living under tmp_path.

    Each call gets a unique run.name so named actors never collide across tests.
    """
    from conf import load_config

    def make(*overrides: str, profile: str | None = None):
        base = [f"run.home={tmp_path}", f"run.name=t{uuid.uuid4().hex[:10]}", "tracking.enabled=false",
                "data.symbols=[synthetic:SYN0]", "data.synthetic.length=600", "features.window=16",
                "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.dim_feedforward=64",
                "train.batch_size=16", "ray.call_timeout_s=60", "ray.torch_threads=1"]
        return load_config(profile, [*base, *overrides])

    return make
