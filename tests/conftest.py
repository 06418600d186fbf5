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
from dataclasses import dataclass, field

import pg_server
import pytest
from support import free_port, tiny_overrides

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@dataclass(frozen=True)
class S3Bucket:
    """The test session's S3 store: ``url`` (``s3://<name>``) at ``endpoint``, with the key of a
    user allowed everything. ``env`` is what a process (a Ray node, ``mlflow server``) needs to
    reach it; the fixture also sets it in this process."""

    name: str
    url: str
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[S3Bucket]:
    """A real S3 server (moto, on 127.0.0.1, a free port) with one bucket, for the session.

    Credentials are checked, as on a real store: only the key in ``env`` works, so a test of
    wrong credentials sees the store refuse them. The AWS_* variables are set here, before the
    Ray clusters that depend on this fixture start, so their workers inherit them.
    """
    import json

    import boto3
    from moto import settings as moto_settings
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    setup = boto3.Session(
        aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
    )
    iam = setup.client("iam", endpoint_url=endpoint)
    iam.create_user(UserName="candleray-ci")
    allow_all = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="candleray-ci", PolicyName="all", PolicyDocument=json.dumps(allow_all)
    )
    key = iam.create_access_key(UserName="candleray-ci")["AccessKey"]
    name = "candleray-tests"
    setup.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is authenticated
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Bucket(name=name, url=f"s3://{name}", endpoint=endpoint, env=env)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(s3_bucket: S3Bucket) -> Iterator[None]:
    import ray

    # num_cpus is logical: the ModelActors take 0.5 each, so several fit beside test tasks;
    # one unit of a custom resource, for the placement tests (tests/test_placement.py)
    ray.init(
        num_cpus=4,
        resources={"test_slot": 1},
        include_dashboard=False,
        namespace="candleray-tests",
        log_to_driver=False,
    )
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
    yield from _mlflow_server(root, str(root / "art"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg_server.PgServer]:
    """A real PostgreSQL server on 127.0.0.1 for the test session (Debian's binaries; `make
    test` installs them), its superuser ``candleray`` logging in by password."""
    if pg_server.find_bin() is None:
        pytest.skip(
            "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: run `make database` "
            "(apt-get install postgresql)"
        )
    server = pg_server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: pg_server.PgServer) -> str:
    """``postgresql+psycopg://…`` of the session's database ``candleray`` (run.database_url)."""
    return postgres.url("candleray")


@pytest.fixture(scope="session")
def s3_server_uri(
    tmp_path_factory: pytest.TempPathFactory, s3_bucket: S3Bucket, request: pytest.FixtureRequest
) -> Iterator[str]:
    """``mlflow server`` as teams run it: its backend store on PostgreSQL (a database of its
    own), artifacts proxied to ``<s3_bucket>/mlflow``."""
    root = tmp_path_factory.mktemp("s3server")
    backend = None
    if pg_server.find_bin() is not None:
        backend = request.getfixturevalue("postgres").create_database("mlflow")
    yield from _mlflow_server(root, f"{s3_bucket.url}/mlflow", backend)  # the AWS_* env is set


def _mlflow_server(root, artifacts: str, backend: str | None = None) -> Iterator[str]:
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
                backend or f"sqlite:///{root / 'srv.db'}",
                "--artifacts-destination",
                artifacts,
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
