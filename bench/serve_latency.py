"""``POST /predict`` over HTTP: latency against a no-op Serve deployment and the bare forward
pass, and throughput with 32 concurrent clients with and without batching.

One local Serve instance, one HTTP proxy, three apps under their own route prefixes:

* ``/b``: the product app (``serve.app.build_app``: FastAPI ingress → batched predictor,
  batching from ``serve.*``), so ``POST /b/predict`` is exactly what a user calls;
* ``/u``: the same app with ``serve.max_batch_size=1`` (no batching);
* ``/n``: a no-op deployment that takes the same request body and answers a constant
  (Serve's own cost of an HTTP request: proxy, routing, one replica);
* ``/c``: the product's ingress composed with a no-op predictor (answers without a forward
  pass): what the composition costs, ingress and handle hop included, apart from the model.

Each request is a window of candles (the history one prediction needs, as JSON), the
usual client's request. ``direct`` is ``Predictor.predict`` on that window's features, in
this process, one torch thread like a replica. ``request work`` is what the ingress does
around the forward pass (body parsing, features, the answer), timed in this process.

* latency: one request at a time over a keep-alive connection; each round times noop,
  batched and direct in turn so drift on the machine hits all three. Goal: batched p50 <=
  noop p50 + 1.5 x direct p50; the median of the per-round margins is reported.
* throughput: 32 closed-loop clients (aiohttp, each sends its next request when the last
  is answered) for a fixed time; rounds alternate batched / unbatched / noop, ratio per
  round. Goal: batched >= 3x unbatched.

    .venv/bin/python bench/serve_latency.py [--rounds 5] [--requests 300] [--seconds 5]
        [config overrides, e.g. serve.max_batch_size=32]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import ray
import torch
from ray import serve
from starlette.requests import Request

from actors import ModelClient, spec_from_config
from pipelines.backtest.report import plain
from pipelines.config import load_config
from serve.api import PredictIn, _bars
from serve.app import Ingress, build_app
from serve.backend import _history_bars
from serve.batched import WindowPrediction
from serve.config import ingress_options
from serve.predictor import Predictor
from serve.windows import interpret, model_input, model_input_from_values

ANSWER = {"time": None, "ghost": {}, "probs": {}, "signal": "HOLD", "version": 0}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class NoOp:
    async def __call__(self, request: Request) -> dict[str, Any]:
        await request.body()
        return ANSWER


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class NoOpPredictor:
    async def predict(self, windows: np.ndarray) -> list[list[WindowPrediction]]:
        return [WindowPrediction((0.0,) * 5, (1.0, 0.0, 0.0), 0, None, "noop", 0, 1)] * len(windows)

    def info(self) -> dict[str, Any]:
        return {"forward_passes": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))  # ms


def windows_of_candles(n_bodies: int, bars: int, timeframe: str) -> list[pd.DataFrame]:
    """``n_bodies`` random-walk candle windows of ``bars`` bars, newest last."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(n_bodies):
        idx = pd.date_range("2024-01-01", periods=bars, freq=pd.Timedelta(timeframe), tz="UTC")
        idx = idx + pd.Timedelta(timeframe) * bars * k
        c = 100 * np.exp(np.cumsum(rng.standard_normal(bars) * 0.01))
        o = np.r_[c[0], c[:-1]]
        hi = np.maximum(o, c) * (1 + rng.random(bars) * 0.005)
        lo = np.minimum(o, c) * (1 - rng.random(bars) * 0.005)
        v = rng.random(bars) * 1e3 + 1
        out.append(
            pd.DataFrame(
                {"open": o, "high": hi, "low": lo, "close": c, "volume": v},
                index=pd.DatetimeIndex(idx, name="time"),
            )
        )
    return out


def body_of(df: pd.DataFrame) -> bytes:
    rows = [
        {"time": t.isoformat(), **{k: float(v) for k, v in row.items()}}
        for t, row in zip(df.index, df.to_dict("records"), strict=True)
    ]
    return json.dumps({"candles": rows}).encode()


class Conn:
    """One keep-alive HTTP connection; ``post`` returns the decoded JSON answer."""

    def __init__(self, port: int) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port)

    def post(self, path: str, body: bytes) -> Any:
        self.c.request("POST", path, body, {"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"POST {path}: {r.status} {data[:300]!r}")
        return json.loads(data)


def sequential(call, bodies: list, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(bodies[i % len(bodies)])
        out.append(time.perf_counter() - t0)
    return out


async def clients(port: int, path: str, bodies: list[bytes], n: int, seconds: float) -> float:
    """Answers/s with ``n`` closed-loop clients during ``seconds``."""
    done = 0
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"POST {path}: {r.status}")
                done += 1
                i += n

        # one request per client first: connections open outside the timed window
        stop = time.perf_counter() + 0.2
        await asyncio.gather(*(client(k) for k in range(n)))
        done = 0
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(n)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per round")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput window per round")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. serve.max_batch_size=32")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="candleray-bench-")
    cfg = load_config(
        overrides=[
            f"run.home={home}",
            "run.name=bench-serve",
            "tracking.enabled=false",
            *args.overrides,
        ]
    )
    s, d, f = cfg.serve, cfg.data, cfg.features
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    client = ModelClient.connect(cfg)  # the app's replicas find it by name
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one = replace(cfg, serve=replace(s, replicas=1))
    serve.run(build_app(one), name="batched", route_prefix="/b")
    unbatched = replace(one, serve=replace(one.serve, max_batch_size=1))
    serve.run(build_app(unbatched), name="unbatched", route_prefix="/u")
    serve.run(NoOp.bind(), name="noop", route_prefix="/n")
    composed = Ingress.options(**ingress_options(one.serve)).bind(NoOpPredictor.bind(), one)
    serve.run(composed, name="composed", route_prefix="/c")
    predictor = serve.get_deployment_handle("BatchedPredictor", app_name="batched")

    bars = _history_bars(f.window, d.timeframe, d.extra_timeframes)
    frames = windows_of_candles(64, bars, d.timeframe)
    bodies = [body_of(df) for df in frames]

    # in this process: the forward pass alone, and the ingress's work around it
    torch.set_num_threads(1)  # a replica with < 1 CPU runs torch on one thread
    spec = spec_from_config(cfg)
    direct = Predictor(spec, "cpu")
    snap = client.call("weights_snapshot")
    direct.load(ray.get(snap["ref"]), snap["version"], snap["generation"])
    inputs = [model_input(df, f.window, d.timeframe, d.extra_timeframes) for df in frames]

    def request_work(body: bytes) -> None:
        bars = _bars(PredictIn.model_validate_json(body).candles or [])
        inp = model_input_from_values(*bars, f.window, d.timeframe, d.extra_timeframes)
        a = direct.predict(inp.x)
        sig = interpret(a.candle[0], a.probs[0], inp, cfg.backtest.confidence)
        json.dumps(plain({"time": inp.end, "ghost": sig.ghost, "probs": sig.probs}))

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, ray {ray.__version__}; model d_model={spec.d_model} "
        f"layers={spec.n_layers} window={spec.window} features={spec.n_features}; request: "
        f"{bars} candles ({len(bodies[0])} bytes of JSON); predictor replica num_cpus="
        f"{s.replica_num_cpus}; batching max_batch_size={s.max_batch_size} "
        f"batch_wait_timeout_s={s.batch_wait_timeout_s}; load average {os.getloadavg()[0]:.1f}"
    )
    conn = Conn(port)
    first = conn.post("/b/predict", bodies[0])
    assert first["version"] == snap["version"], first
    calls = {
        "noop": lambda b: conn.post("/n", b),
        "composed no-op": lambda b: conn.post("/c/predict", b),
        "batched": lambda b: conn.post("/b/predict", b),
        "direct": lambda k: direct.predict(inputs[k].x),
        "request work": request_work,
    }
    args_of = {"direct": list(range(len(inputs)))}
    for k, fn in calls.items():  # warm-up
        sequential(fn, args_of.get(k, bodies), 30)
    lat: dict[str, list[float]] = {k: [] for k in calls}
    margins, over_composed = [], []
    for _ in range(args.rounds):
        p50 = {}
        for k, fn in calls.items():
            t = sequential(fn, args_of.get(k, bodies), args.requests)
            lat[k] += t
            p50[k] = pct(t, 50)
        margins.append((p50["batched"] - p50["noop"]) / p50["direct"])
        over_composed.append((p50["batched"] - p50["composed no-op"]) / p50["direct"])

    paths = {"batched": "/b/predict", "unbatched": "/u/predict", "noop": "/n"}
    thr: dict[str, list[float]] = {k: [] for k in paths}
    ratios = []
    passes0 = predictor.info.remote().result()["forward_passes"]
    for _ in range(args.rounds):
        for k, path in paths.items():
            thr[k].append(asyncio.run(clients(port, path, bodies, args.clients, args.seconds)))
        ratios.append(thr["batched"][-1] / thr["unbatched"][-1])
    passes = predictor.info.remote().result()["forward_passes"] - passes0
    per_pass = sum(thr["batched"]) * args.seconds / max(passes, 1)  # answers ≈ rate x window

    print(f"\nlatency, POST /predict with one window of {bars} candles, sequential (ms)")
    print("| path | p50 | p99 |\n| --- | ---: | ---: |")
    for k in calls:
        print(f"| {k} | {pct(lat[k], 50):.2f} | {pct(lat[k], 99):.2f} |")
    m = statistics.median(margins)
    print(
        f"(batched p50 - noop p50) / direct p50, median of rounds: {m:.2f} (goal <= 1.5: "
        f"{'met' if m <= 1.5 else 'NOT met'}); per round: "
        f"{' '.join(f'{r:.2f}' for r in sorted(margins))}"
    )
    c = statistics.median(over_composed)
    print(
        f"(batched p50 - composed no-op p50) / direct p50, median of rounds: {c:.2f}; per round: "
        f"{' '.join(f'{r:.2f}' for r in sorted(over_composed))}"
    )
    print(f"\nthroughput, {args.clients} concurrent clients (answers/s)")
    print("| app | median | per round |\n| --- | ---: | --- |")
    for k in paths:
        print(f"| {k} | {statistics.median(thr[k]):.0f} | {' '.join(f'{v:.0f}' for v in thr[k])} |")
    print(f"batched: {per_pass:.1f} requests per forward pass on average")
    r = statistics.median(ratios)
    print(
        f"batched / unbatched, median of rounds: {r:.2f} (goal >= 3: "
        f"{'met' if r >= 3 else 'NOT met'}); per round: {' '.join(f'{v:.2f}' for v in sorted(ratios))}"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
