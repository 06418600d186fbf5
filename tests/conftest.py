"""Shared fixtures: one local Ray cluster per test session, configs in temp folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from support import free_port, tiny_overrides

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

    Each call gets a unique run.name so named actors never collide across tests, unless
    ``name=`` asks for an existing model's (to reopen its checkpoints).
    """
    from pipelines.config import load_config

    def make(*overrides: str, profile: str | None = None, name: str | None = None):
        base = tiny_overrides(tmp_path, name or f"t{uuid.uuid4().hex[:10]}")
        return load_config(profile, [*base, *overrides])

    return make


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts, up for the test session."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey job runner
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'srv.db'}",
                "--artifacts-destination",
                str(root / "art"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,  # its own process group: the server forks uvicorn
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up at {uri}:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
