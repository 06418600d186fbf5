"""Predictor latency and throughput on Ray Serve, against a no-op deployment and a bare forward pass.

Three deployments on one local Serve instance, one replica each with the same CPUs:
``batched`` (the product predictor, batching from ``serve.*``), ``unbatched`` (the same
with ``max_batch_size=1``) and ``noop`` (takes the same request and returns at once: the
cost of Serve itself). Requests go through a ``DeploymentHandle`` from this process (the
HTTP ingress is measured separately once it exists).

* latency: one window per request, one request at a time; rounds alternate noop /
  batched / direct forward (``Predictor.predict`` in this process, same torch threads as a
  replica) so drift on the machine hits all three. Goal: batched p50 <= noop p50 + 1.5 x
  direct p50, checked per round; the median of the per-round margins is reported.
* throughput: 32 concurrent clients (asyncio, each sends its next request when the last
  is answered) for a fixed time; rounds alternate batched / unbatched. Goal: >= 3x.

    .venv/bin/python bench/serve_latency.py [--rounds 5] [--requests 200] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import ray
import torch
from ray import serve

from actors import ModelClient, spec_from_config
from pipelines.config import load_config
from serve.predictor import Predictor
from serve.predictor_app import build_predictor_app


@serve.deployment
class NoOp:
    async def predict(self, windows: np.ndarray) -> list[int]:
        return [len(windows)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))  # ms


def sequential(call, x: np.ndarray, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(x[i % len(x)][None])
        out.append(time.perf_counter() - t0)
    return out


async def clients(handle, x: np.ndarray, n_clients: int, seconds: float) -> float:
    """Requests/s answered with ``n_clients`` closed-loop clients during ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            await handle.predict.remote(x[i % len(x)][None])
            done += 1
            i += n_clients

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(n_clients)))
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per round")
    ap.add_argument("--seconds", type=float, default=4.0, help="throughput window per round")
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
    s = cfg.serve
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    client = ModelClient.connect(cfg)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    one_replica = replace(s, replicas=1)
    batched = serve.run(
        build_predictor_app(replace(cfg, serve=one_replica)), name="batched", route_prefix=None
    )
    unbatched = serve.run(
        build_predictor_app(replace(cfg, serve=replace(one_replica, max_batch_size=1))),
        name="unbatched",
        route_prefix=None,
    )
    noop = serve.run(
        NoOp.options(
            ray_actor_options={"num_cpus": s.replica_num_cpus},
            max_ongoing_requests=s.max_ongoing_requests,
        ).bind(),
        name="noop",
        route_prefix=None,
    )
    spec = spec_from_config(cfg)
    # a replica with < 1 CPU runs torch on one thread (Ray sets OMP_NUM_THREADS=1): so does this
    torch.set_num_threads(1)
    direct = Predictor(spec, "cpu")
    snap = client.call("weights_snapshot")
    direct.load(ray.get(snap["ref"]), snap["version"], snap["generation"])
    x = (
        np.random.default_rng(0)
        .standard_normal((256, spec.window, spec.n_features))
        .astype(np.float32)
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"ray {ray.__version__}; model d_model={spec.d_model} layers={spec.n_layers} "
        f"window={spec.window} features={spec.n_features}; replica num_cpus={s.replica_num_cpus}; "
        f"batching max_batch_size={s.max_batch_size} batch_wait_timeout_s={s.batch_wait_timeout_s}"
    )
    calls = {
        "noop": lambda w: noop.predict.remote(w).result(),
        "batched": lambda w: batched.predict.remote(w).result(),
        "direct": lambda w: direct.predict(w),
    }
    for f in calls.values():  # warm-up
        sequential(f, x, 20)
    lat: dict[str, list[float]] = {k: [] for k in calls}
    margins = []
    for _ in range(args.rounds):
        p50 = {}
        for k, f in calls.items():
            t = sequential(f, x, args.requests)
            lat[k] += t
            p50[k] = pct(t, 50)
        margins.append((p50["batched"] - p50["noop"]) / p50["direct"])
    thr: dict[str, list[float]] = {"batched": [], "unbatched": [], "noop": []}
    ratios = []
    passes0 = batched.info.remote().result()["forward_passes"]
    for _ in range(args.rounds):
        for k, h in (("batched", batched), ("unbatched", unbatched), ("noop", noop)):
            thr[k].append(asyncio.run(clients(h, x, args.clients, args.seconds)))
        ratios.append(thr["batched"][-1] / thr["unbatched"][-1])
    passes = batched.info.remote().result()["forward_passes"] - passes0
    per_pass = sum(thr["batched"]) * args.seconds / max(passes, 1)  # requests ≈ rate x window

    print("\nlatency, one window per request, sequential (through a DeploymentHandle; ms)")
    print("| path | p50 | p99 |\n| --- | ---: | ---: |")
    for k in ("noop", "batched", "direct"):
        print(f"| {k} | {pct(lat[k], 50):.2f} | {pct(lat[k], 99):.2f} |")
    m = statistics.median(margins)
    print(
        f"(batched p50 - noop p50) / direct p50, median of rounds: {m:.2f} (goal <= 1.5: "
        f"{'met' if m <= 1.5 else 'NOT met'}); per round: {' '.join(f'{r:.2f}' for r in sorted(margins))}"
    )
    print(f"\nthroughput, {args.clients} concurrent clients, one window per request (requests/s)")
    print("| deployment | median req/s | per round |\n| --- | ---: | --- |")
    for k in ("batched", "unbatched", "noop"):
        print(f"| {k} | {statistics.median(thr[k]):.0f} | {' '.join(f'{v:.0f}' for v in thr[k])} |")
    print(f"batched: {per_pass:.1f} requests per forward pass on average")
    r = statistics.median(ratios)
    print(
        f"batched / unbatched, median of rounds: {r:.2f} (goal >= 3: {'met' if r >= 3 else 'NOT met'}); "
        f"per round: {' '.join(f'{v:.2f}' for v in sorted(ratios))}"
    )
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
