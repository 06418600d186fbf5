"""The whole Serve app for a test module: ModelActor, session hosts, JobBoard, predictor and
two ingress replicas on 127.0.0.1 and a free port, started once and shut down at the end."""

from __future__ import annotations

import asyncio
import json
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


TOPOLOGIES = ("single", "composed")


def two_ingress_replicas(topology: str) -> list[str]:
    """Two replicas answering HTTP: a job, session or annotation made through one is seen
    through the other (the ingress keeps no state of its own). In single they are
    serve.replicas (each holds the model); in composed serve.ingress_* in front of one
    predictor."""
    if topology == "single":
        return ["serve.topology=single", "serve.replicas=2"]
    return ["serve.topology=composed", "serve.ingress_replicas=2", "serve.ingress_num_cpus=0.05"]


@contextmanager
def running_app(home: Path, *overrides: str, topology: str = "single") -> Iterator[RunningApp]:
    from ray import serve

    from actors import ModelClient, start_hosts
    from actors.jobs import job_board
    from serve.app import INGRESS, start

    port = free_port()
    cfg = load_config(
        None,
        [
            *tiny_overrides(home, f"api{uuid.uuid4().hex[:8]}"),
            "serve.host=127.0.0.1",
            f"serve.port={port}",
            f"serve.token={TOKEN}",
            "serve.replica_num_cpus=0.05",
            *two_ingress_replicas(topology),
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
        ingress = serve.status().applications[cfg.run.name].deployments[INGRESS]
        assert ingress.replica_states.get("RUNNING") == 2, ingress
        yield RunningApp(cfg, f"http://127.0.0.1:{port}", TOKEN, client, checkpoint, home)
    finally:
        serve.shutdown()
        for actor in [*hosts, board, client.handle]:
            ray.kill(actor, no_restart=True)


@contextmanager
def other_topology(app: RunningApp) -> Iterator[RunningApp]:
    """``app``'s config in serve.topology=composed, deployed beside it in the same Serve
    instance under ``/composed`` (one ingress, one predictor): the routes that reach the model
    are checked on both topologies without a second Serve start."""
    from dataclasses import replace

    from ray import serve

    from serve.app import build_app

    assert app.cfg.serve.topology == "single", app.cfg.serve.topology
    s = replace(app.cfg.serve, topology="composed", replicas=1)
    name = f"{app.cfg.run.name}-composed"
    serve.run(build_app(replace(app.cfg, serve=s)), name=name, route_prefix="/composed")
    try:
        yield replace(app, cfg=replace(app.cfg, serve=s), url=f"{app.url}/composed")
    finally:
        serve.delete(name)


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


# -- the FastAPI app in-process: plain ASGI calls, no Ray, no sockets ------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeBackend:
    """The API's ``Backend`` with canned answers; ``calls`` lists (method, args) it got."""

    def __init__(self, checkpoints: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.listed = checkpoints or []

    def __getattr__(self, name: str) -> Any:
        async def answer(*args: Any) -> Any:
            self.calls.append((name, args))
            canned = {"checkpoints": self.listed, "start_job": "job-1", "sessions": []}
            return canned.get(name, {"id": "s-1"})

        return answer


def asgi_call(
    app: Any,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    chunks: list[bytes] | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    receive_hangs: bool = False,
) -> tuple[Reply, int]:
    """One request to ``app``: ``body`` with a Content-Length, or ``chunks`` without one (as
    Transfer-Encoding: chunked arrives); ``receive_hangs``: the client never sends its body.
    Returns the reply and how many body messages the app took."""
    hdrs = {"host": "127.0.0.1:8000", "content-type": "application/json", **(headers or {})}
    messages: list[dict[str, Any]] = []
    if chunks is not None:
        hdrs.setdefault("transfer-encoding", "chunked")
        messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    elif not receive_hangs:
        if body is not None:
            hdrs.setdefault("content-length", str(len(body)))
        messages = [{"type": "http.request", "body": body or b"", "more_body": False}]
    taken = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if taken < len(messages):
            taken += 1
            return messages[taken - 1]
        await asyncio.Event().wait()  # nothing more from this client
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in hdrs.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    # a generous deadline: a request that would hang fails the test instead
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    got = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
    return Reply(start["status"], got, out), taken
