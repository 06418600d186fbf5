"""``candleray backtest``: the model over many symbols in parallel; table, JSON report, MLflow run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from conf import Config


def register(sub: Any) -> None:
    b = sub.add_parser(
        "backtest",
        help="backtest the model over many symbols in parallel: table, JSON report, MLflow run",
    )
    b.add_argument(
        "--symbols",
        default=None,
        help="comma-separated symbol specs (default: data.symbols), e.g. sample:EURUSD,synthetic:SYN0",
    )
    b.add_argument(
        "--range",
        dest="range_",
        default=None,
        metavar="START:END",
        help="ISO dates START:END, or START..END when a side has a time; either side may be empty",
    )
    b.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH|best|latest",
        help="weights to test (default: the running ModelActor's, else the newest checkpoint)",
    )
    b.add_argument(
        "--out",
        default=None,
        help="JSON report: a path or any fsspec URI, e.g. s3://bucket/reports/r.json "
        "(default: <run.home>/backtests/<run.name>-<time>.json)",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    return cmd_backtest(cfg, args.symbols, args.range_, args.checkpoint, args.out)


def cmd_backtest(
    cfg: Config,
    symbols: str | None = None,
    range_: str | None = None,
    checkpoint: str | None = None,
    out: str | None = None,
    *,
    jobs: list[Any] | None = None,
) -> int:
    """Backtest over ``symbols`` (or explicit ``jobs``); 0 when the run completed, even with failed symbols."""
    import dataclasses

    import ray

    from pipelines.backtest.config import parse_range
    from pipelines.backtest.report import Progress, format_table, log_mlflow, write_json
    from pipelines.backtest.runner import jobs_for, run_backtests
    from pipelines.backtest.weights import resolve_weights
    from pipelines.cli.train import ui_link
    from pipelines.cluster import init_ray
    from pipelines.errors import ConfigError

    if range_ is not None:
        since, until = parse_range(range_)
        cfg = dataclasses.replace(
            cfg, backtest=dataclasses.replace(cfg.backtest, since=since, until=until)
        )
    if jobs is None:
        names = (
            [s.strip() for s in symbols.split(",") if s.strip()]
            if symbols is not None
            else list(cfg.data.symbols)
        )
        if not names:
            raise ConfigError(
                "--symbols is empty; name at least one, e.g. --symbols sample:EURUSD,synthetic:SYN0"
            )
        jobs = jobs_for(names, cfg, range_from="--range" if range_ is not None else None)
    owns_ray = init_ray(cfg)
    try:
        weights = resolve_weights(cfg, checkpoint)
        print(
            f"backtest: {len(jobs)} symbols, {weights.source} weights {weights.version} (step {weights.step}), "
            f"walk-forward {cfg.backtest.walk_forward}, confidence {cfg.backtest.confidence}"
        )
        progress = Progress(len(jobs))
        try:
            run = run_backtests(jobs, weights, cfg, on_done=progress)
        finally:
            progress.close()
    finally:
        if owns_ray:
            ray.shutdown()
    print(format_table(run))
    for o in run.failed:
        print(f"FAILED {o.name}: {o.error_type}: {o.error}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = write_json(
        run, cfg, out or Path(cfg.run.home) / "backtests" / f"{cfg.run.name}-{stamp}.json"
    )
    print(
        f"{len(run.outcomes) - len(run.failed)}/{len(run.outcomes)} symbols in {run.seconds:.1f}s; report: {path}"
    )
    if cfg.tracking.enabled:
        run_id = log_mlflow(run, cfg)
        experiment = cfg.run.name + "-backtest"
        print(f"MLflow run {run_id} in experiment {experiment!r} at {cfg.tracking.uri}")
        link = ui_link(cfg, experiment)
        if link:
            print(f"  MLflow UI: {link}")
    return 0 if len(run.failed) < len(run.outcomes) else 1
