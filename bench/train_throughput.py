"""Training samples/s through the ModelActor vs a raw torch loop, same model, batch and threads.

The actor path is the product path: the training set is put in the object store once and
``pipelines.jobs.training.train_split`` sends index chunks to the actor with two calls in
flight; the actor validates, weights the loss, records metrics, writes MLflow (sqlite)
and checkpoints. The raw path is a bare torch loop in this process: forward, loss,
backward, AdamW step. Rounds alternate raw/actor so drift on the machine hits both.

    .venv/bin/python bench/train_throughput.py [--threads 1 2] [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import ray
import torch
import torch.nn.functional as F

from actors import ModelClient, spec_from_config
from pipelines.config import load_config
from pipelines.data.dataset import Dataset, Split
from pipelines.jobs.training import train_split
from pipelines.model.network import CandleTransformer
from serve.predictor import Predictor


def make_data(spec, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32) * 0.5,
        rng.integers(0, 3, n),
    )


def raw_loop(spec, data: Dataset, batch: int, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CandleTransformer(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    x, yc, ya = (torch.from_numpy(a) for a in (data.x, data.y_candle, data.y_action))
    perm = np.random.default_rng(1).permutation(len(data))

    def step(i: int) -> None:
        b = torch.from_numpy(perm[(i * batch) % (len(perm) - batch) :][:batch])
        pred, logits = model(x[b])
        loss = F.smooth_l1_loss(pred, yc[b]) + F.cross_entropy(logits, ya[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for i in range(10):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - t0)


def actor_loop(client, cfg, data: Dataset, steps: int) -> float:
    batch = cfg.train.batch_size
    warm = data.subset(np.arange(10 * batch))
    split = Split(warm, warm.subset(np.arange(0)), {})
    train_split(client, split, cfg, epochs=1)
    timed = Split(data.subset(np.arange(steps * batch)), warm.subset(np.arange(0)), {})
    t0 = time.perf_counter()
    train_split(client, timed, cfg, epochs=1)
    return steps * batch / (time.perf_counter() - t0)


def snapshot_times(client, spec, n: int = 20) -> tuple[float, float, float]:
    """(ms to publish a snapshot in the trainer, ms to fetch it, ms to load it in a predictor)."""
    from pipelines.model.trainer import Trainer

    cfg = load_config()
    t = Trainer(spec, cfg.train, torch.device("cpu"))
    t0 = time.perf_counter()
    for _ in range(n):
        t.weights_cpu()
    publish = (time.perf_counter() - t0) / n * 1e3
    pred = Predictor(spec, "cpu")
    fetch, load = [], []
    for _ in range(n):
        t1 = time.perf_counter()
        snap = client.call("weights_snapshot")
        state = ray.get(snap["ref"])
        t2 = time.perf_counter()
        pred.load(state, snap["version"])
        t3 = time.perf_counter()
        fetch.append((t2 - t1) * 1e3)
        load.append((t3 - t2) * 1e3)
    return publish, statistics.median(fetch), statistics.median(load)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="candleray-bench-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
        f"available, torch {torch.__version__}, ray {ray.__version__}"
    )
    rows = []
    for threads in args.threads:
        cfg = load_config(
            overrides=[
                f"run.home={home}",
                f"run.name=bench-t{threads}",
                f"train.batch_size={args.batch}",
                f"ray.torch_threads={threads}",
                "model.dropout=0.0",
                "checkpoint.every_steps=200",
            ]
        )
        spec = spec_from_config(cfg)
        data = make_data(spec, max(args.steps, 20) * args.batch)
        client = ModelClient.connect(cfg)
        raw, act = [], []
        for _ in range(args.rounds):
            raw.append(raw_loop(spec, data, args.batch, args.steps, threads))
            act.append(actor_loop(client, cfg, data, args.steps))
        ratios = sorted(
            a / r for a, r in zip(act, raw, strict=True)
        )  # per round: drift hits both sides
        rows.append((threads, statistics.median(raw), statistics.median(act), ratios))
        if threads == args.threads[-1]:
            pub, fetch, load = snapshot_times(client, spec)
        client.call("close")
        ray.kill(client.handle)
    print(
        f"\nmodel d_model={cfg.model.d_model} layers={cfg.model.n_layers} window={cfg.features.window} "
        f"features={spec.n_features}; batch {args.batch}; {args.steps} steps x {args.rounds} rounds (median)"
    )
    print(
        f"{'threads':>8}{'raw torch samples/s':>22}{'ModelActor samples/s':>23}{'ratio':>8}  per-round ratios"
    )
    for threads, raw, act, ratios in rows:
        print(
            f"{threads:>8}{raw:>22.0f}{act:>23.0f}{statistics.median(ratios):>8.3f}  "
            f"{' '.join(f'{r:.2f}' for r in ratios)}"
        )
    print("ratio: median over rounds of (actor / raw) measured back to back in the same round")
    print(
        f"\nweights snapshot: publish (CPU copy in the trainer) {pub:.2f} ms, "
        f"fetch via object store {fetch:.2f} ms, load into a predictor {load:.2f} ms (median of 20)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
