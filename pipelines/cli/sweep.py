"""``candleray sweep``: many training runs at once on Ray Tune, compared in MLflow.

    candleray sweep --space conf/sweeps/demo.yaml [--trials N] [--scheduler asha|fifo]
        [--metric NAME] [--mode min|max] [--max-concurrent K] [--resume] [--json] [KEY=VALUE ...]

The space file is checked against the config before Ray starts (``pipelines.sweep.space``).
Progress goes to stderr; the final table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from conf import Config
from pipelines.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep", help="hyperparameter sweep on Ray Tune: trials compared in MLflow, best promoted"
    )
    p.add_argument("--space", help="YAML file: config keys mapped to distributions")
    p.add_argument("--trials", type=int, help="samples drawn from the space (sweep.trials)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), help="sweep.scheduler")
    p.add_argument("--metric", help="held-out figure to rank by (sweep.metric)")
    p.add_argument("--mode", choices=("min", "max"), help="sweep.mode")
    p.add_argument("--max-concurrent", type=int, help="trials at once (sweep.max_concurrent)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue this run.name's newest interrupted sweep (its config and space as started)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def with_args(cfg: Config, args: argparse.Namespace) -> Config:
    """The sweep section with the command's options applied, validated like config."""
    from conf.validate import check_sweep

    changes = {
        k: v
        for k, v in {
            "trials": args.trials,
            "scheduler": args.scheduler,
            "metric": args.metric,
            "mode": args.mode,
            "max_concurrent": args.max_concurrent,
        }.items()
        if v is not None
    }
    out = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, **changes))
    check_sweep(out)
    return out


def run(cfg: Config, args: argparse.Namespace) -> int:
    import ray

    from pipelines.cluster import init_ray
    from pipelines.sweep.runner import check_metric, latest_unfinished, run_sweep
    from pipelines.sweep.space import load_space
    from pipelines.sweep.state import check_storage

    cfg = with_args(cfg, args)
    if not cfg.tracking.enabled:
        raise ConfigError(
            "candleray sweep compares its trials in MLflow; set tracking.enabled=true"
        )
    check_storage(cfg.sweep.storage)  # before Ray, MLflow or any folder
    space = None
    if args.resume:
        latest_unfinished(cfg)  # nothing to resume: said before Ray starts
    else:
        if not args.space:
            raise ConfigError("candleray sweep needs --space FILE (e.g. conf/sweeps/demo.yaml)")
        space = load_space(args.space, cfg)  # every problem before Ray or MLflow is touched
        check_metric(cfg.sweep.metric)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    owns_ray = init_ray(cfg)
    try:
        result = run_sweep(cfg, space, resume=args.resume, say=say)
    finally:
        if owns_ray:
            ray.shutdown()
    link = _link(cfg, result["experiment"])
    result["link"] = link
    if args.json:
        print(json.dumps(result, default=str, indent=1))
    else:
        _print_table(result)
        if link:
            print(f"MLflow UI (the sweep's runs, children under the parent): {link}")
    return 130 if result["interrupted"] else 0


def _link(cfg: Config, experiment: str) -> str | None:
    from pipelines.cli.train import ui_link

    return ui_link(cfg, experiment)


def _print_table(result: dict[str, Any]) -> None:
    metric = result["metric"]
    state = "interrupted (candleray sweep --resume goes on)" if result["interrupted"] else "done"
    print(
        f"sweep {result['sweep']}: {state}; parent run {result['parent_run_id']} in "
        f"experiment {result['experiment']!r}; sorted by {metric} ({result['mode']})"
    )
    print(f"{'trial':<14}{'status':<15}{'epochs':>7}{metric:>22}{'dir acc':>9}  overrides")
    for r in result["trials"]:
        best = "-" if r["best"] is None else f"{r['best']:.4f}"
        acc = "-" if r["direction_accuracy"] is None else f"{r['direction_accuracy']:.3f}"
        note = f"  ({r['error']})" if r["error"] else ""
        print(
            f"{r['trial_id']:<14}{r['status']:<15}{r['epochs']:>7}{best:>22}{acc:>9}  "
            f"{r['name']}{note}"
        )
    reg = result.get("registered")
    if result.get("best") and reg:
        print(
            f"best: trial {result['best']['trial_id']} {result['best']['name']}, registered as "
            f"{reg['model']} version {reg['version']} (@{reg['alias']})"
        )
