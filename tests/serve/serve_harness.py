"""The whole Serve app for a test module: ModelActor, session hosts, JobBoard, predictor and
two ingress replicas on 127.0.0.1 and a free port, started once and shut down at the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import requests
from support import free_port, tiny_overrides

from conf import Config
from pipelines.config import load_config

SYMBOL = "synthetic:SYN0"
TOKEN = "s3cret-" + uuid.uuid4().hex  # unguessable in a log by accident


@dataclass
class RunningApp:
    cfg: Config
    url: str
    token: str
    client: Any  # ModelClient
    checkpoint: str  # a saved checkpoint's path
    home: Path

    def http(self, *, token: bool = True) -> requests.Session:
        s = requests.Session()
        if token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s


@contextmanager
def running_app(home: Path, *overrides: str) -> Iterator[RunningApp]:
    from ray import serve

    from actors import ModelClient, start_hosts
    from actors.jobs import job_board
    from serve.app import start

    port = free_port()
    cfg = load_config(
        None,
        [
            *tiny_overrides(home, f"api{uuid.uuid4().hex[:8]}"),
            "serve.host=127.0.0.1",
            f"serve.port={port}",
            f"serve.token={TOKEN}",
            "serve.replica_num_cpus=0.05",
            # two ingress replicas: a job, session or annotation made through one is seen
            # through the other (the ingress keeps no state of its own)
            "serve.ingress_replicas=2",
            "serve.ingress_num_cpus=0.05",
            "serve.max_request_bytes=20000",
            "live.hosts=1",
            *overrides,
        ],
    )
    client = ModelClient.connect(cfg)
    checkpoint = client.call("save_checkpoint", "manual")["path"]
    hosts = start_hosts(cfg)
    board = job_board(cfg)  # held: the board lives while this handle does
    try:
        start(cfg)
        ingress = serve.status().applications[cfg.run.name].deployments["Ingress"]
        assert ingress.replica_states.get("RUNNING") == 2, ingress
        yield RunningApp(cfg, f"http://127.0.0.1:{port}", TOKEN, client, checkpoint, home)
    finally:
        serve.shutdown()
        for actor in [*hosts, board, client.handle]:
            ray.kill(actor, no_restart=True)


def fingerprint(app: RunningApp) -> dict[str, Any]:
    """Everything a state-changing route could change, read through the API."""
    s = app.http(token=False)  # reads are open
    get = lambda path: s.get(app.url + path, timeout=30).json()  # noqa: E731
    m = get("/training-metrics")
    return {
        "sessions": sorted((x["id"], x["mode"]) for x in get("/sessions")),
        "annotations": sorted(a["id"] for a in get("/annotations")),
        "checkpoints": sorted((c["path"], c["is_best"]) for c in get("/checkpoints")),
        "jobs": sorted(j["id"] for j in get("/jobs")),
        "model": (m["generation"], m["version"]),
    }


def wait_job(app: RunningApp, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    s = app.http(token=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = s.get(f"{app.url}/jobs/{job_id}", timeout=30).json()
        if job["state"] != "running":
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still running after {timeout_s}s: {job}")


def candles(app: RunningApp) -> pd.DataFrame:
    from pipelines.data.sources import load_candles, parse_symbol

    return load_candles(parse_symbol(SYMBOL, "1h"), app.cfg.data)


def field_errors(reply: Any) -> list[str]:
    """The names of the fields a 422 from FastAPI's validation points at."""
    assert reply.status_code == 422, reply.text
    return [".".join(str(p) for p in e["loc"][1:]) for e in reply.json()["detail"]]
