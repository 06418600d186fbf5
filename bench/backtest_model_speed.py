"""Model-driven backtest speed: the whole backtest vs a bare forward pass, and Ray fan-out vs one process.

    .venv/bin/python bench/backtest_model_speed.py                 # 20k bars, 8 symbols
    .venv/bin/python bench/backtest_model_speed.py --bars 3000 --symbols 4 --rounds 2   # a smoke run

1. One symbol: windows/s of ``backtest_model`` (all windows built, batched inference, policy,
   ``simulate``, trade and model statistics; candles built beforehand) vs the raw batched
   forward pass over the same windows (prebuilt; ``model(x)`` in batches of
   ``backtest.inference_batch``, and of 4096 for comparison, under ``torch.no_grad``). Same
   model (default config, random weights), same torch threads.
2. Many symbols (each ``--bars`` synthetic bars, loaded inside the job): Ray tasks
   (``ray.init(num_cpus=2)``, one CPU and one torch thread per task) vs the same jobs one after
   another in this process with one torch thread. The Ray workers are started and warmed up
   (modules imported) by a small run first; the times are of the runs after that.

Ratios are paired: each round times both sides back to back, in alternating order (A then B,
then B then A ...), and the ratio is taken within the round, so load on the machine that comes
and goes hits both sides of it. The table gives median times, and the median of the per-round
ratios with their min-max.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
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


CPU: dict[str, list[float]] = {"raw": [], "full": []}  # process CPU seconds, beside the wall times


def raw_forward(weights: BacktestWeights, x: np.ndarray, batch: int, cpu: str = "") -> float:
    model = CandleTransformer(weights.spec).eval()
    model.load_state_dict(weights.state)
    xt = torch.from_numpy(x)
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(xt), batch):
            c, logits = model(xt[s : s + batch])
            torch.softmax(logits, dim=1)
    if cpu:
        CPU[cpu].append(time.process_time() - c0)
    return time.perf_counter() - t0


def ratio_text(num: list[float], den: list[float]) -> str:
    """Median of the per-round ratios num/den, with their min-max: "0.99x (0.95-1.02)"."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"


def bench_one_symbol(cfg, weights: BacktestWeights, rounds: int) -> dict:
    candles = generate("BENCH", cfg.data.timeframe, cfg.data.synthetic)
    w = all_windows(candles, cfg.data.timeframe, weights.extra_timeframes, weights.spec.window)
    batch = cfg.backtest.inference_batch
    raw, full, raw_4096 = [], [], []
    backtest_model(
        candles, weights, cfg, timeframe=cfg.data.timeframe
    )  # warm-up (allocator, kernels)

    def end_to_end() -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        backtest_model(candles, weights, cfg, timeframe=cfg.data.timeframe)
        CPU["full"].append(time.process_time() - c0)
        return time.perf_counter() - t0

    for r in range(rounds):
        if r % 2 == 0:
            raw.append(raw_forward(weights, w.x, batch, "raw"))
            full.append(end_to_end())
        else:
            full.append(end_to_end())
            raw.append(raw_forward(weights, w.x, batch, "raw"))
        raw_4096.append(raw_forward(weights, w.x, 4096))
    return {"windows": len(w), "batch": batch, "raw": raw, "full": full, "raw_4096": raw_4096}


def bench_many(cfg, weights: BacktestWeights, n_symbols: int, rounds: int) -> dict:
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

        def sequential():
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            out = run_in_process(jobs, weights, cfg)
            return time.perf_counter() - t0, out

        def parallel():
            t0 = time.perf_counter()
            out = run_backtests(jobs, weights, cfg, torch_threads=1)
            return time.perf_counter() - t0, out

        seq, par = [], []
        for r in range(rounds):
            if r % 2 == 0:
                (ts, a), (tp, b) = sequential(), parallel()
            else:
                (tp, b), (ts, a) = parallel(), sequential()
            seq.append(ts)
            par.append(tp)
            assert not a.failed and not b.failed
            for x, y in zip(a.outcomes, b.outcomes, strict=True):  # the same results either way
                assert np.array_equal(x.backtest.actions, y.backtest.actions)
    finally:
        ray.shutdown()
    return {"symbols": n_symbols, "seq": seq, "par": par}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=20_000)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for part 1 (both sides)")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (part 1: at least 5)")
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
        one = bench_one_symbol(cfg, weights, max(5, args.rounds))
        many = bench_many(cfg, weights, args.symbols, args.rounds)
    med = statistics.median
    raw_s, full_s, raw4_s = med(one["raw"]), med(one["full"]), med(one["raw_4096"])
    n_win = one["windows"]
    rows = [
        (f"1 symbol, {n_win} windows, {args.threads} torch thread(s)", "", "", ""),
        (
            f"  raw batched forward pass, batch {one['batch']}",
            f"{raw_s:.2f} s",
            f"{n_win / raw_s:,.0f} windows/s",
            "",
        ),
        ("  (same, batch 4096)", f"{raw4_s:.2f} s", f"{n_win / raw4_s:,.0f} windows/s", ""),
        (
            f"  model-driven backtest, end to end, batch {one['batch']}",
            f"{full_s:.2f} s",
            f"{n_win / full_s:,.0f} windows/s",
            f"{ratio_text(one['raw'], one['full'])} of raw (goal >= 0.95)",
        ),
        (
            "  same, process CPU time (steadier on a shared machine)",
            f"{med(CPU['full']):.2f} s",
            "",
            f"{ratio_text(CPU['raw'], CPU['full'])} of raw's CPU time",
        ),
        (f"{many['symbols']} symbols x {args.bars} bars, 1 torch thread per job", "", "", ""),
        ("  sequential, one process", f"{med(many['seq']):.2f} s", "", ""),
        (
            "  Ray tasks, num_cpus=2, 1 CPU per task",
            f"{med(many['par']):.2f} s",
            "",
            f"{ratio_text(many['seq'], many['par'])} faster (goal >= 1.7)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'time':>9}  {'throughput':>20}  ratio")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>9}  {r[2]:>20}  {r[3]}")
    print(
        f"(times: median of {max(5, args.rounds)} rounds for 1 symbol, {args.rounds} for "
        f"{many['symbols']} symbols; ratio: median (min-max) of the per-round ratios, both sides "
        f"back to back in alternating order; load average at the end: {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
