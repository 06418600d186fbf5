"""Long jobs the Serve app starts: batch training (on history or on annotations) and
backtests over many symbols. Plain functions: the caller passes ``report(done, total)``
for progress and gets a JSON-ready result; ``actors.jobs`` runs them as Ray tasks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from conf import Config
from pipelines.errors import ConfigError

Report = Callable[[int, int], None]

TRAINING_KINDS: tuple[str, ...] = ("history", "annotations")


def training_job(cfg: Config, kind: str, epochs: int | None, report: Report) -> dict[str, Any]:
    """Epochs through the running ModelActor; the result names steps, metrics and checkpoint."""
    from actors import ModelClient
    from pipelines.jobs.training import prepare, train_split

    if kind not in TRAINING_KINDS:
        raise ConfigError(f"training kind {kind!r} is not one of {list(TRAINING_KINDS)}")
    if kind == "annotations":
        from pipelines.jobs.annotations import annotation_split

        split = annotation_split(cfg).split
        n_epochs = epochs if epochs is not None else cfg.annotations.epochs
    else:
        split = prepare(cfg)
        n_epochs = epochs if epochs is not None else cfg.train.epochs
    client = ModelClient.find(cfg)  # a job task must not own the model: it ends with the task
    per_epoch = max(1, -(-len(split.train) // cfg.train.batch_size))
    total = per_epoch * n_epochs
    report(0, total)

    def progress(epoch: int, done: int, metrics: dict[str, float]) -> None:
        report(epoch * per_epoch + done, total)

    results = train_split(
        client,
        split,
        cfg,
        epochs=n_epochs,
        progress=progress,
        kind="batch" if kind == "history" else kind,
    )
    ckpt = client.call("save_checkpoint", "batch" if kind == "history" else kind)
    last = results[-1].metrics if results else {}
    return {
        "kind": kind,
        "epochs": n_epochs,
        "samples": len(split.train),
        "steps": sum(r.steps for r in results),
        **{
            k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and math.isfinite(v)
        },
        "checkpoint": ckpt.get("path"),
    }


def backtest_job(
    cfg: Config,
    symbols: Sequence[str],
    since: str | None,
    until: str | None,
    checkpoint: str | None,
    report: Report,
) -> dict[str, Any]:
    """One Ray task per symbol (``pipelines.backtest.runner``); per-symbol rows, the portfolio
    and the trades, as the dashboard's results table reads them."""
    from pipelines.backtest.config import check_backtest_config
    from pipelines.backtest.report import plain, trades_frame
    from pipelines.backtest.runner import jobs_for, run_backtests
    from pipelines.backtest.weights import resolve_weights

    if not symbols:
        raise ConfigError('symbols is empty; name at least one, e.g. ["sample:EURUSD"]')
    bt = dataclasses.replace(cfg.backtest, since=since, until=until)
    check_backtest_config(bt)
    cfg = dataclasses.replace(cfg, backtest=bt)
    jobs = jobs_for(list(symbols), cfg, range_from="since/until")
    weights = resolve_weights(cfg, checkpoint)
    report(0, len(jobs))
    run = run_backtests(jobs, weights, cfg, on_done=lambda _o, done, total: report(done, total))
    rows: list[dict[str, Any]] = []
    for o in run.outcomes:
        if o.backtest is None:
            rows.append({"name": o.name, "error": f"{o.error_type}: {o.error}"})
            continue
        s = o.backtest.result.stats
        rows.append(
            {
                "name": o.name,
                "return_pct": 100 * s["total_return"],
                "pnl": s["final_equity"] - o.backtest.result.spec.cash,
                "trades": s["n_trades"],
                "win_rate": s["win_rate"],
                "sharpe": s["sharpe"],
                "max_drawdown": s["max_drawdown"],
                "direction_acc": o.backtest.model["direction_acc"],
                # the dashboard sets these beside a live session's signals and paper trades:
                # bars in the range, windows predicted (the bars before the first full
                # window give no signal) and the signals traded
                "bars": len(o.backtest.actions),
                **{k: o.backtest.model[k] for k in ("windows", "signals_buy", "signals_sell")},
            }
        )
    portfolio = None
    if run.portfolio is not None:
        p = run.portfolio.stats
        portfolio = {
            "return_pct": 100 * p["total_return"],
            "pnl": p["final_equity"] - cfg.backtest.cash,
            "sharpe": p["sharpe"],
            "max_drawdown": p["max_drawdown"],
            "symbols": p["symbols"],
        }
    trades = trades_frame(run)
    return plain(
        {
            "symbols": rows,
            "portfolio": portfolio,
            "trades": trades.head(1000).to_dict(orient="records"),
            "weights": run.weights,
            "seconds": run.seconds,
        }
    )
