"""Model-driven backtests at scale: 1, 10, 100 and 1,000 symbols through ``candleray backtest``'s runner.

    .venv/bin/python bench/backtest_scale.py            # 1, 10, 100, 1000 symbols x 10,000 bars
    .venv/bin/python bench/backtest_scale.py --quick    # 1, 10, 50 symbols x 2,000 bars (a check)

Each size runs ``run_backtests`` (one Ray task per symbol, ``ray.init(num_cpus=2)``, one CPU
and one torch thread per task: the product path the CLI takes) over that many synthetic
symbols, each generated inside its task, then builds what the CLI builds from the run: the
table and the JSON report (``format_table``, ``report_dict``). Random weights of the default
model; ``tracking.enabled=false`` (MLflow is not what is measured here).

Per size: seconds per symbol (the run plus its report, wall time), the driver's peak RSS and
the object store's peak use while it ran (both sampled every 0.2 s by a thread of this
process). Fan-out: at ``--fanout-symbols`` symbols, paired rounds of the Ray runner vs the
same jobs one after another in this process (``run_in_process``, one torch thread), in
alternating order; the ratio is the median of the per-round ratios.

The last line is for scripts:
``scale L / S symbols: R.RRx time per symbol; driver peak RSS N MiB; fan-out F.FFx``
with L the largest size, S the second (10 by default), RSS at the largest size.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backtest_model_speed import make_config, random_weights  # noqa: E402

from pipelines.backtest.report import format_table, report_dict  # noqa: E402
from pipelines.backtest.runner import BacktestJob, run_backtests, run_in_process  # noqa: E402

MIB = 1 << 20


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; psutil is not a dependency)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Peaks:
    """Samples this process's RSS and the object store's bytes in use until stopped."""

    def __init__(self, period: float = 0.2) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self._reply = get_memory_info_reply
        self.period = period
        self.rss = self.store = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.rss = max(self.rss, rss_bytes())
        try:
            used = self._reply(self._state, timeout_seconds=10).store_stats.object_store_bytes_used
            self.store = max(self.store, int(used))
        except Exception:  # a slow reply under load: skip this sample
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> Peaks:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def jobs(n: int, tag: str) -> list[BacktestJob]:
    return [BacktestJob(f"synthetic:{tag}{i}") for i in range(n)]


def run_size(cfg, weights, n: int) -> dict:
    gc.collect()
    with Peaks() as peaks:
        t0 = time.perf_counter()
        run = run_backtests(jobs(n, "S"), weights, cfg, torch_threads=1)
        t_run = time.perf_counter() - t0
        table = format_table(run)
        report = report_dict(run, cfg)
        seconds = time.perf_counter() - t0
    assert not run.failed, run.failed[0].error
    assert len(report["symbols"]) == n and table.count("\n") >= n + 1
    del run, report, table
    return {
        "n": n,
        "seconds": seconds,
        "run": t_run,
        "per_symbol": seconds / n,
        "rss": peaks.rss / MIB,
        "store": peaks.store / MIB,
    }


def fan_out(cfg, weights, n: int, rounds: int) -> list[float]:
    js = jobs(n, "F")
    ratios = []
    for r in range(rounds):

        def seq() -> float:
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            run_in_process(js, weights, cfg)
            return time.perf_counter() - t0

        def par() -> float:
            t0 = time.perf_counter()
            run_backtests(js, weights, cfg, torch_threads=1)
            return time.perf_counter() - t0

        if r % 2 == 0:
            s, p = seq(), par()
        else:
            p, s = par(), seq()
        ratios.append(s / p)
        print(f"  fan-out round {r + 1}: sequential {s:.2f} s, Ray tasks {p:.2f} s: {s / p:.2f}x")
    return ratios


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1, 10, 50 symbols x 2,000 bars")
    ap.add_argument("--bars", type=int, default=None, help="bars per symbol (default 10,000)")
    ap.add_argument("--sizes", default=None, help="comma-separated symbol counts")
    ap.add_argument("--fanout-symbols", type=int, default=None, help="default: 10 (4 quick)")
    ap.add_argument("--rounds", type=int, default=None, help="fan-out paired rounds (3; 2 quick)")
    args = ap.parse_args(argv)
    bars = args.bars or (2_000 if args.quick else 10_000)
    sizes = [
        int(s) for s in (args.sizes or ("1,10,50" if args.quick else "1,10,100,1000")).split(",")
    ]
    n_fan = args.fanout_symbols or (4 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 3)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the start; {bars} bars per symbol"
    )
    with tempfile.TemporaryDirectory() as home:
        cfg = make_config(home, bars)
        weights = random_weights(cfg)
        torch.set_num_threads(1)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
        try:
            run_backtests(jobs(2, "W"), weights, cfg, torch_threads=1)  # start and warm 2 workers
            results = []
            for n in sizes:
                r = run_size(cfg, weights, n)
                results.append(r)
                print(
                    f"{n:>5} symbols: {r['seconds']:8.2f} s ({r['run']:.2f} s running), "
                    f"{r['per_symbol']:.3f} s per symbol; driver peak RSS {r['rss']:.0f} MiB; "
                    f"object store peak {r['store']:.0f} MiB",
                    flush=True,
                )
            print(f"fan-out, {n_fan} symbols, paired rounds in alternating order:")
            ratios = fan_out(cfg, weights, n_fan, rounds)
        finally:
            ray.shutdown()
    big = results[-1]
    ref = next((r for r in results if r["n"] == 10), results[min(1, len(results) - 1)])
    print(
        f"(fan-out: median of {len(ratios)} per-round ratios, min-max "
        f"{min(ratios):.2f}-{max(ratios):.2f}; load average at the end {os.getloadavg()[0]:.2f})"
    )
    print(
        f"scale {big['n']} / {ref['n']} symbols: {big['per_symbol'] / ref['per_symbol']:.2f}x "
        f"time per symbol; driver peak RSS {big['rss']:.0f} MiB; "
        f"fan-out {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
