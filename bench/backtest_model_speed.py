"""Model-driven backtest speed: the whole backtest vs a bare forward pass, and Ray fan-out vs one process.

    .venv/bin/python bench/backtest_model_speed.py                 # 20k bars, 8 symbols
    .venv/bin/python bench/backtest_model_speed.py --bars 3000 --symbols 4 --repeat 1   # a smoke run

1. One symbol: windows/s of ``backtest_model`` (all windows built, batched inference, policy,
   ``simulate``, trade and model statistics; candles built beforehand) vs the raw batched
   forward pass over the same windows (prebuilt; ``model(x)`` in batches of
   ``backtest.inference_batch``, and of 4096 for comparison, under ``torch.no_grad``). Same
   model (default config, random weights), same torch threads.
2. Many symbols (each ``--bars`` synthetic bars, loaded inside the job): Ray tasks
   (``ray.init(num_cpus=2)``, one CPU and one torch thread per task) vs the same jobs one after
   another in this process with one torch thread. The Ray workers are started and warmed up
   (modules imported) by a small run first; the times are of the runs after that.

Rounds alternate so drift on the machine hits both sides; the best round of each is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors import spec_from_config  # noqa: E402
from pipelines.backtest.inference import all_windows  # noqa: E402
from pipelines.backtest.model_driven import backtest_model  # noqa: E402
from pipelines.backtest.runner import BacktestJob, run_backtests, run_in_process  # noqa: E402
from pipelines.backtest.weights import BacktestWeights  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.data.sources.synthetic import generate  # noqa: E402
from pipelines.model.network import CandleTransformer  # noqa: E402


def make_config(home: str, bars: int):
    return load_config(
        None,
        [
            f"run.home={home}",
            "tracking.enabled=false",
            "model.device=cpu",
            f"data.synthetic.length={bars}",
            "backtest.task_num_cpus=1",
            "backtest.confidence=0.4",
        ],
    )


def random_weights(cfg) -> BacktestWeights:
    torch.manual_seed(0)
    spec = spec_from_config(cfg)
    state = {k: v.detach().clone() for k, v in CandleTransformer(spec).state_dict().items()}
    return BacktestWeights(spec, state, "bench", "random", 0, cfg.data.extra_timeframes)


def raw_forward(weights: BacktestWeights, x: np.ndarray, batch: int) -> float:
    model = CandleTransformer(weights.spec).eval()
    model.load_state_dict(weights.state)
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(xt), batch):
            c, logits = model(xt[s : s + batch])
            torch.softmax(logits, dim=1)
    return time.perf_counter() - t0


def bench_one_symbol(cfg, weights: BacktestWeights, repeat: int) -> dict[str, float]:
    candles = generate("BENCH", cfg.data.timeframe, cfg.data.synthetic)
    w = all_windows(candles, cfg.data.timeframe, weights.extra_timeframes, weights.spec.window)
    batch = cfg.backtest.inference_batch
    raw, full = [], []
    backtest_model(
        candles, weights, cfg, timeframe=cfg.data.timeframe
    )  # warm-up (allocator, kernels)
    for _ in range(repeat):
        raw.append(raw_forward(weights, w.x, batch))
        t0 = time.perf_counter()
        backtest_model(candles, weights, cfg, timeframe=cfg.data.timeframe)
        full.append(time.perf_counter() - t0)
    return {
        "windows": len(w),
        "batch": batch,
        "raw_s": min(raw),
        "full_s": min(full),
        "raw_4096_s": raw_forward(weights, w.x, 4096),
    }


def bench_many(cfg, weights: BacktestWeights, n_symbols: int, repeat: int) -> dict[str, float]:
    import ray

    jobs = [BacktestJob(f"synthetic:B{i}") for i in range(n_symbols)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
    try:
        small = dataclasses.replace(
            cfg,
            data=dataclasses.replace(
                cfg.data, synthetic=dataclasses.replace(cfg.data.synthetic, length=600)
            ),
        )
        run_backtests(
            [BacktestJob("synthetic:W0"), BacktestJob("synthetic:W1")],
            weights,
            small,
            torch_threads=1,
        )  # start 2 workers and import everything there
        seq, par = [], []
        for _ in range(repeat):
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            a = run_in_process(jobs, weights, cfg)
            seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = run_backtests(jobs, weights, cfg, torch_threads=1)
            par.append(time.perf_counter() - t0)
            assert not a.failed and not b.failed
            for x, y in zip(a.outcomes, b.outcomes, strict=True):  # the same results either way
                assert np.array_equal(x.backtest.actions, y.backtest.actions)
    finally:
        ray.shutdown()
    return {"symbols": n_symbols, "seq_s": min(seq), "par_s": min(par)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=20_000)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for part 1 (both sides)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    with tempfile.TemporaryDirectory() as home:
        cfg = make_config(home, args.bars)
        weights = random_weights(cfg)
        s = weights.spec
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
            f"{torch.__version__}; model d_model={s.d_model} layers={s.n_layers} window={s.window} "
            f"features={s.n_features} ({sum(v.numel() for v in weights.state.values())} parameters)"
        )
        torch.set_num_threads(args.threads)
        one = bench_one_symbol(cfg, weights, max(5, args.repeat))
        many = bench_many(cfg, weights, args.symbols, args.repeat)
    raw_wps, full_wps = one["windows"] / one["raw_s"], one["windows"] / one["full_s"]
    speedup = many["seq_s"] / many["par_s"]
    rows = [
        (f"1 symbol, {one['windows']} windows, {args.threads} torch thread(s)", "", "", ""),
        (
            f"  raw batched forward pass, batch {one['batch']}",
            f"{one['raw_s']:.2f} s",
            f"{raw_wps:,.0f} windows/s",
            "",
        ),
        (
            "  (same, batch 4096)",
            f"{one['raw_4096_s']:.2f} s",
            f"{one['windows'] / one['raw_4096_s']:,.0f} windows/s",
            "",
        ),
        (
            f"  model-driven backtest, end to end, batch {one['batch']}",
            f"{one['full_s']:.2f} s",
            f"{full_wps:,.0f} windows/s",
            f"{full_wps / raw_wps:.2f}x of raw (goal >= 0.9)",
        ),
        (f"{many['symbols']} symbols x {args.bars} bars, 1 torch thread per job", "", "", ""),
        ("  sequential, one process", f"{many['seq_s']:.2f} s", "", ""),
        (
            "  Ray tasks, num_cpus=2, 1 CPU per task",
            f"{many['par_s']:.2f} s",
            "",
            f"{speedup:.2f}x faster (goal >= 1.7)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'time':>9}  {'throughput':>20}  ratio")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>9}  {r[2]:>20}  {r[3]}")
    print(
        f"(best of {max(5, args.repeat)} rounds for 1 symbol, {args.repeat} for {many['symbols']} symbols; "
        f"load average at the end: {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
