"""``POST /predict`` over real HTTP, per topology (``serve.topology``), against a no-op Serve
deployment; throughput with 32 concurrent clients; and Serve's own knobs.

One local Serve instance, one HTTP proxy, these apps under their own route prefixes:

* ``/s``: the product app, ``serve.topology=single`` (the default): the FastAPI ingress holds
  the batched model, one Serve hop;
* ``/u``: the same with ``serve.max_batch_size=1`` (no batching);
* ``/c``: the product app, ``serve.topology=composed``: ingress → predictor by Ray actor calls;
* ``/g``: composed with ``serve.predictor_transport=grpc`` (Serve's gRPC between replicas);
* ``/n``: a no-op deployment that takes the same request body and answers a constant
  (Serve's own cost of an HTTP request: proxy, routing, one replica).

Each request is a window of candles (the history one prediction needs, as JSON), the usual
client's request. ``direct`` is ``Predictor.predict`` on that window's features in this
process (one torch thread, as a replica); ``request work`` is what the ingress does around
it (body parsing, features, forward pass, answer), timed in this process.

* latency: one request at a time over a keep-alive connection; each round times every path
  in turn, so drift on the machine hits all of them; the margin (p50 − no-op p50, ms) is
  taken per round and its median reported. Goal: single margin <= 1.5 ms.
* throughput: 32 closed-loop clients (aiohttp) for a fixed time; rounds alternate the apps,
  ratios per round. Goal: single >= 0.8x no-op. Batched vs unbatched with the requests per
  forward pass (the single ingress replica's own count).
* ``--knob throughput-optimized``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` is read when each
  Serve process starts, so it cannot be paired inside one Ray: the parent runs one child
  process per round (a fresh Ray each), alternating off / on, and pairs the rounds.

Lines a script can read: ``single: p50 X ms, no-op p50 Y ms, margin Z ms``, ``composed: ...``,
``composed grpc: ...``, ``throughput single / no-op: R.RRx``, ``batched / unbatched: R.RRx``.

    .venv/bin/python bench/serve_latency.py [--rounds 5] [--requests 300] [--seconds 5]
        [--quick] [--knob throughput-optimized] [config overrides, e.g. serve.max_batch_size=32]
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

ANSWER = {"time": None, "ghost": {}, "probs": {}, "signal": "HOLD", "version": 0}
APPS = {"single": "/s/predict", "composed": "/c/predict", "composed grpc": "/g/predict"}
KNOB_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def post(self, path: str, body: bytes | None, method: str = "POST") -> Any:
        self.c.request(method, path, body, {"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data)


def sequential(call: Callable[[Any], Any], bodies: list[Any], n: int) -> list[float]:
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


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start Ray, Serve and the apps; run ``args.rounds`` paired rounds; figures as a dict."""
    import ray
    import torch
    from ray import serve
    from starlette.requests import Request

    from actors import ModelClient, spec_from_config
    from pipelines.backtest.report import plain
    from pipelines.config import load_config
    from serve.api import PredictIn, _bars
    from serve.app import build_app
    from serve.backend import _history_bars
    from serve.predictor import Predictor
    from serve.windows import interpret, model_input, model_input_from_values

    @serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
    class NoOp:
        async def __call__(self, request: Request) -> dict[str, Any]:
            await request.body()
            return ANSWER

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

    def app_cfg(**kw: Any) -> Any:
        return replace(cfg, serve=replace(s, replicas=1, **kw))

    serve.run(build_app(app_cfg(topology="single")), name="single", route_prefix="/s")
    serve.run(
        build_app(app_cfg(topology="single", max_batch_size=1)), name="unbatched", route_prefix="/u"
    )
    serve.run(build_app(app_cfg(topology="composed")), name="composed", route_prefix="/c")
    grpc = app_cfg(topology="composed", predictor_transport="grpc")
    serve.run(build_app(grpc), name="grpc", route_prefix="/g")
    serve.run(NoOp.bind(), name="noop", route_prefix="/n")

    bars = _history_bars(f.window, d.timeframe, d.extra_timeframes)
    frames = windows_of_candles(64, bars, d.timeframe)
    bodies = [body_of(df) for df in frames]

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

    conn = Conn(port)
    for path in APPS.values():
        got = conn.post(path, bodies[0])
        assert got["version"] == snap["version"], (path, got)
    calls: dict[str, Callable[[Any], Any]] = {"no-op": lambda b: conn.post("/n", b)}
    for name, path in APPS.items():
        calls[name] = lambda b, path=path: conn.post(path, b)
    calls["direct"] = lambda k: direct.predict(inputs[k].x)
    calls["request work"] = request_work
    args_of = {"direct": list(range(len(inputs)))}
    for k, fn in calls.items():  # warm-up
        sequential(fn, args_of.get(k, bodies), 30)
    lat: dict[str, list[float]] = {k: [] for k in calls}
    margins: dict[str, list[float]] = {k: [] for k in APPS}
    for _ in range(args.rounds):
        p50 = {}
        for k, fn in calls.items():
            t = sequential(fn, args_of.get(k, bodies), args.requests)
            lat[k] += t
            p50[k] = pct(t, 50)
        for k in APPS:
            margins[k].append(p50[k] - p50["no-op"])

    paths = {
        "single": "/s/predict",
        "unbatched": "/u/predict",
        "composed": "/c/predict",
        "no-op": "/n",
    }
    thr: dict[str, list[float]] = {k: [] for k in paths}

    # the single replica's own count, over HTTP: with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 a
    # handle in this (sync) driver has no event loop for its router
    def forward_passes() -> int:
        # a fresh connection: Serve closes one left idle during the throughput rounds
        return int(Conn(port).post("/s/health", None, "GET")["predictor"]["forward_passes"])

    passes0 = forward_passes()
    for _ in range(args.rounds):
        for k, path in paths.items():
            thr[k].append(asyncio.run(clients(port, path, bodies, args.clients, args.seconds)))
    passes = forward_passes() - passes0
    answers = sum(thr["single"]) * args.seconds  # ≈ rate x window, summed over rounds
    serve.shutdown()
    ray.shutdown()
    return {
        "setting": (
            f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, ray "
            f"{ray.__version__}; model d_model={spec.d_model} layers={spec.n_layers} "
            f"window={spec.window} features={spec.n_features}; request: {bars} candles "
            f"({len(bodies[0])} bytes of JSON); replica num_cpus={s.replica_num_cpus}; "
            f"max_batch_size={s.max_batch_size} batch_wait_timeout_s={s.batch_wait_timeout_s}"
        ),
        "p50": {k: pct(v, 50) for k, v in lat.items()},
        "p99": {k: pct(v, 99) for k, v in lat.items()},
        "margins": margins,
        "throughput": thr,
        "per_pass": answers / max(passes, 1),
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def report(r: dict[str, Any], clients_n: int) -> None:
    print(r["setting"])
    p50, p99 = r["p50"], r["p99"]
    print("\nlatency, POST /predict, one window per request, sequential (ms)")
    print("| path | p50 | p99 |\n| --- | ---: | ---: |")
    for k in p50:
        print(f"| {k} | {p50[k]:.2f} | {p99[k]:.2f} |")
    print()
    for k, ms in r["margins"].items():
        m = median(ms)
        per = " ".join(f"{v:.2f}" for v in sorted(ms))
        goal = f" (goal <= 1.5: {'met' if m <= 1.5 else 'NOT met'})" if k == "single" else ""
        print(
            f"{k}: p50 {p50[k]:.2f} ms, no-op p50 {p50['no-op']:.2f} ms, margin {m:.2f} ms{goal}; "
            f"margin per round: {per}"
        )
    thr = r["throughput"]
    print(f"\nthroughput, {clients_n} concurrent clients (answers/s)")
    print("| app | median | per round |\n| --- | ---: | --- |")
    for k, v in thr.items():
        print(f"| {k} | {median(v):.0f} | {' '.join(f'{x:.0f}' for x in v)} |")
    for a, b, goal in (("single", "no-op", 0.8), ("composed", "no-op", None)):
        ratios = [x / y for x, y in zip(thr[a], thr[b], strict=True)]
        g = f" (goal >= {goal}: {'met' if median(ratios) >= goal else 'NOT met'})" if goal else ""
        print(f"throughput {a} / {b}: {median(ratios):.2f}x{g}")
    ratios = [x / y for x, y in zip(thr["single"], thr["unbatched"], strict=True)]
    print(
        f"batched / unbatched: {median(ratios):.2f}x (single topology; "
        f"{r['per_pass']:.1f} requests per forward pass batched, 1 unbatched)"
    )


def knob(args: argparse.Namespace) -> None:
    """Rounds alternating RAY_SERVE_THROUGHPUT_OPTIMIZED off / on, a fresh Ray per round."""
    child = [sys.executable, __file__, "--child", "--rounds", "1"]
    child += ["--requests", str(args.requests), "--seconds", str(args.seconds)]
    child += ["--clients", str(args.clients), *args.overrides]
    got: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for i in range(args.rounds * 2):
        setting = ("off", "on")[i % 2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        if setting == "on":
            env[KNOB_ENV] = "1"
        out = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"round {i} ({KNOB_ENV} {setting}) failed:\n{out.stderr[-3000:]}")
        got[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {i + 1}: {KNOB_ENV} {setting}, load average {os.getloadavg()[0]:.1f}")
    print(f"\n{KNOB_ENV}: {args.rounds} round pairs, each round a fresh Ray (ms, answers/s)")
    print("| figure | off | on | on / off, median of pairs |\n| --- | ---: | ---: | ---: |")
    rows: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        (f"{k} p50 ms", lambda r, k=k: r["p50"][k]) for k in ("no-op", *APPS)
    ]
    rows += [
        (f"{k} margin ms", lambda r, k=k: median(r["margins"][k])) for k in ("single", "composed")
    ]
    rows += [
        (f"{k} answers/s", lambda r, k=k: median(r["throughput"][k]))
        for k in ("single", "composed", "no-op")
    ]
    for name, fig in rows:
        off, on = [fig(r) for r in got["off"]], [fig(r) for r in got["on"]]
        pair = median([b / a for a, b in zip(off, on, strict=True)])
        print(f"| {name} | {median(off):.2f} | {median(on):.2f} | {pair:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per round")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput window per round")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="2 short rounds: checks the script")
    ap.add_argument("--knob", choices=["throughput-optimized"], default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. serve.max_batch_size=32")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.seconds = 2, 60, 2.0
    if args.knob:
        knob(args)
        return
    load = os.getloadavg()[0]
    r = measure(args)
    if args.child:
        print(json.dumps(r))
        return
    print(f"load average at the start {load:.1f} (the machine may be shared)")
    report(r, args.clients)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
