"""Data-parallel training: samples/s of the product path with 1 and with 2 ranks, same data.

Both sides are the product path (``pipelines.jobs.training.train_split`` into a ModelActor: the
training set put in the object store once, index chunks of ``train.batches_per_call``
batches, two calls in flight). One side is a ModelActor with ``train.workers=1`` (it trains
itself, one torch thread); the other one with ``train.workers=2`` (two DDP ranks, gloo, one
torch thread and one Ray CPU each), same model, same global batch (``--batch``, 256), same
data. Both actors are started and warmed up first (the 2-rank group is built by its first
step). Each round times both back to back, in alternating order, and the ratio is taken
within the round, so load that comes and goes hits both sides; the result line is the
median of the per-round ratios:

    workers 2 / 1: R.RRx

The all-reduce time per step is rank 0's time inside its collectives (the two small sums
and the gradient all-reduce during the backward pass) over the timed steps; it includes
waiting for the other rank to reach the same point.

    .venv/bin/python bench/train_distributed.py            # 60 steps x 5 rounds, batch 256
    .venv/bin/python bench/train_distributed.py --quick    # a smoke run (small, 2 rounds)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors import ModelClient, spec_from_config  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.data.dataset import Dataset, Split  # noqa: E402
from pipelines.jobs.training import train_split  # noqa: E402


def make_data(spec, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32) * 0.5,
        rng.integers(0, 3, n),
    )


def samples_per_s(client, cfg, data: Dataset) -> float:
    split = Split(data, data.subset(np.arange(0)), {})
    t0 = time.perf_counter()
    train_split(client, split, cfg, epochs=1)
    return len(data) / (time.perf_counter() - t0)


def rank0(cfg):
    """Rank 0 of the model's 2-rank group, found by its name (actors.model.ranks)."""
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == cfg.ray.namespace and a["name"].startswith(f"{cfg.run.name}.rank0."):
            return ray.get_actor(a["name"], namespace=cfg.ray.namespace)
    raise RuntimeError("rank 0 not found")


def inference_latency(client, cfg, spec, data: Dataset, quick: bool) -> tuple[float, float]:
    """p50 ms of what a predictor does per request beside the ModelActor (ask for the newest
    weights version, reload if it moved, predict one window), idle and while a 2-rank batch
    run goes on through the same actor (its reads never wait behind training)."""
    import threading

    from serve.predictor import Predictor

    pred = Predictor(spec, "cpu")
    pred.refresh(client)
    x = data.x[:1]

    def sample(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            pred.refresh(client)
            pred.predict(x)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    n = 20 if quick else 100
    idle = statistics.median(sample(n))
    done = threading.Event()

    def run() -> None:
        try:
            samples_per_s(client, cfg, data)
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(2.0)  # the run is under way (its first calls are in flight)
    busy = []
    while not done.is_set() and len(busy) < n:
        busy.extend(sample(1))
    t.join()
    return idle, statistics.median(busy)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60, help="timed steps per side and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256, help="global batch (train.batch_size)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 steps x 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 8, 2
    home = tempfile.mkdtemp(prefix="candleray-bench-ddp-")
    # logical CPUs: two ModelActors (0.5 each) and two ranks (1 each) fit; the real cores
    # are what the processes share
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, ray {ray.__version__}, load {os.getloadavg()[0]:.2f}"
    )
    common = [
        f"run.home={home}",
        "tracking.enabled=false",
        "model.dropout=0.0",
        "model.device=cpu",
        f"train.batch_size={args.batch}",
        "train.batches_per_call=8",
        "ray.torch_threads=1",
        "train.worker_num_cpus=1",
        "checkpoint.every_steps=100000",
        "checkpoint.on_best=false",
    ]
    cfgs = {
        n: load_config(overrides=[*common, f"run.name=bench-ddp-{n}", f"train.workers={n}"])
        for n in (1, 2)
    }
    spec = spec_from_config(cfgs[1])
    data = make_data(spec, args.steps * args.batch)
    warm = data.subset(np.arange(4 * args.batch))
    clients = {n: ModelClient.connect(cfg) for n, cfg in cfgs.items()}
    for n, c in clients.items():
        samples_per_s(c, cfgs[n], warm)  # starts the actor (and the 2-rank group)
    r0 = rank0(cfgs[2])
    sps: dict[int, list[float]] = {1: [], 2: []}
    ratios, reduce_ms = [], []
    for i in range(args.rounds):
        order = (1, 2) if i % 2 == 0 else (2, 1)
        before = ray.get(r0.allreduce_s.remote())
        got = {n: samples_per_s(clients[n], cfgs[n], data) for n in order}
        reduce_ms.append((ray.get(r0.allreduce_s.remote()) - before) / args.steps * 1e3)
        for n in (1, 2):
            sps[n].append(got[n])
        ratios.append(got[2] / got[1])
        print(
            f"round {i + 1}: 1 rank {got[1]:.0f} samples/s, 2 ranks {got[2]:.0f} samples/s, "
            f"ratio {got[2] / got[1]:.2f}, all-reduce {reduce_ms[-1]:.1f} ms/step"
        )
    idle, busy = inference_latency(clients[2], cfgs[2], spec, data, args.quick)
    for c in clients.values():
        ray.kill(c.handle, no_restart=True)
    print(
        f"\nmodel d_model={cfgs[1].model.d_model} layers={cfgs[1].model.n_layers} "
        f"window={cfgs[1].features.window} features={spec.n_features}; global batch "
        f"{args.batch}; {args.steps} steps x {args.rounds} rounds; load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"1 rank: {statistics.median(sps[1]):.0f} samples/s, 2 ranks: "
        f"{statistics.median(sps[2]):.0f} samples/s (medians)"
    )
    print(f"per-round ratios: {' '.join(f'{r:.2f}' for r in sorted(ratios))}")
    print(f"all-reduce per step (rank 0, median of rounds): {statistics.median(reduce_ms):.1f} ms")
    print(
        f"inference (snapshot check + 1-window predict, p50): idle {idle:.2f} ms, during a "
        f"2-rank batch run {busy:.2f} ms ({busy / idle:.2f}x idle)"
    )
    print(f"workers 2 / 1: {statistics.median(ratios):.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
