"""Reports of a many-symbol backtest: a terminal table, a JSON file and an MLflow run.

Every report carries the resolved config, the weights (checkpoint or actor version) and the
code version. The MLflow run (experiment ``<run.name>-backtest``) holds the config as params,
per-symbol metrics under a sanitised symbol prefix (``synthetic_SYN0_1h/total_return``),
portfolio metrics (``portfolio/...``), and ``equity.png``, ``trades.csv`` and ``report.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from conf import Config, flatten, to_dict
from pipelines.backtest.runner import BacktestRun, SymbolOutcome
from pipelines.storage import filesystem, is_local, translated, write_bytes
from pipelines.version import code_version

# statistics logged as MLflow metrics, per symbol and for the portfolio (finite values only)
_TRADE_METRICS = (
    "total_return",
    "buy_hold_return",
    "annual_return",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "win_rate",
    "n_trades",
    "exposure",
    "profit_factor",
    "final_equity",
    "commissions",
)
_MODEL_METRICS = ("action_acc", "direction_acc", "close_err_vol", "close_err_pct")
_PORTFOLIO_METRICS = (
    "total_return",
    "max_drawdown",
    "sharpe",
    "annual_volatility",
    "final_equity",
    "symbols",
)


def plain(value: Any) -> Any:
    """JSON-safe copy: timestamps as ISO text, durations as text, NaN/inf as null, arrays as lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_prefix(symbol: str) -> str:
    """``binance:BTC/USDT@1h`` → ``binance_BTC_USDT_1h``: a name MLflow accepts as a metric prefix."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", symbol).strip("_") or "symbol"


def _row(o: SymbolOutcome) -> dict[str, Any]:
    if o.backtest is None:
        return {"symbol": o.name, "error": f"{o.error_type}: {o.error}"}
    s, m = o.backtest.result.stats, o.backtest.model
    return {
        "symbol": o.name,
        "bars": s["bars"],
        "trades": s["n_trades"],
        "return": 100 * s["total_return"],
        "buy_hold": 100 * s["buy_hold_return"],
        "sharpe": s["sharpe"],
        "max_dd": 100 * s["max_drawdown"],
        "win_rate": s["win_rate"],
        "action_acc": m["action_acc"],
        "direction_acc": m["direction_acc"],
        "error": "",
    }


_COLUMNS = (
    ("symbol", "symbol", "{}"),
    ("bars", "bars", "{:d}"),
    ("trades", "trades", "{:d}"),
    ("return", "return %", "{:+.2f}"),
    ("buy_hold", "buy&hold %", "{:+.2f}"),
    ("sharpe", "Sharpe", "{:.2f}"),
    ("max_dd", "max DD %", "{:.2f}"),
    ("win_rate", "win rate", "{:.2f}"),
    ("action_acc", "action acc", "{:.3f}"),
    ("direction_acc", "dir acc", "{:.3f}"),
    ("error", "error", "{}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def format_table(run: BacktestRun, max_error: int = 60) -> str:
    """One row per symbol and a portfolio row; failed symbols show their error."""
    rows = [_row(o) for o in run.outcomes]
    if run.portfolio is not None:
        p = run.portfolio.stats
        rows.append(
            {
                "symbol": f"PORTFOLIO ({p['symbols']} even)",
                "bars": p["bars"],
                "return": 100 * p["total_return"],
                "sharpe": p["sharpe"],
                "max_dd": 100 * p["max_drawdown"],
                "error": "",
            }
        )
    cells = [[_cell(r.get(key), fmt) for key, _, fmt in _COLUMNS] for r in rows]
    for c in cells:
        if len(c[-1]) > max_error:
            c[-1] = c[-1][: max_error - 3] + "..."
    heads = [h for _, h, _ in _COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    if not any(c[-1] for c in cells):  # no errors: drop the empty column
        heads, widths, cells = heads[:-1], widths[:-1], [c[:-1] for c in cells]

    left = {0, len(heads) - 1} if heads[-1] == "error" else {0}  # text columns; numbers align right

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i in left else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def report_dict(run: BacktestRun, cfg: Config) -> dict[str, Any]:
    """Everything the JSON report holds: per-symbol stats, model stats, portfolio, config, versions."""
    symbols = []
    for o in run.outcomes:
        entry: dict[str, Any] = {"symbol": o.name, "job": dataclasses.asdict(o.job), "ok": o.ok}
        if o.backtest is None:
            entry.update(error=o.error, error_type=o.error_type)
        else:
            b = o.backtest
            entry.update(
                stats=b.result.stats,
                model=b.model,
                training=b.training,
                seconds=b.seconds,
                open_trades=len(b.result.open_trades),
            )
        symbols.append(entry)
    portfolio = (
        None if run.portfolio is None else {**run.portfolio.stats, "shares": run.portfolio.shares}
    )
    return plain(
        {
            "kind": "backtest",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "code_version": code_version(),
            "weights": run.weights,
            "seconds": run.seconds,
            "symbols": symbols,
            "portfolio": portfolio,
            "config": to_dict(cfg),
        }
    )


def write_json(run: BacktestRun, cfg: Config, path: str | Path) -> Path | str:
    """The JSON report at a local path (returned as a Path) or any fsspec URI such as
    ``s3://bucket/reports/r.json`` (``--out``; written as one object, returned as given)."""
    text = json.dumps(report_dict(run, cfg), indent=1, allow_nan=False)
    if not is_local(str(path)):
        uri = str(path)
        with translated(setting="--out", uri=uri, action="writing the backtest report"):
            fs, where = filesystem(uri)
            write_bytes(fs, where, text.encode())
        return uri
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def trades_frame(run: BacktestRun) -> pd.DataFrame:
    """All trades of all symbols: ``symbol`` and ``status`` (closed / open) columns first."""
    parts = []
    for o in run.outcomes:
        if o.backtest is None:
            continue
        for status, frame in (
            ("closed", o.backtest.result.trades),
            ("open", o.backtest.result.open_trades),
        ):
            if len(frame):
                parts.append(frame.assign(symbol=o.name, status=status))
    if not parts:
        return pd.DataFrame(columns=["symbol", "status"])
    df = pd.concat(parts, ignore_index=True)
    return df[["symbol", "status", *[c for c in df.columns if c not in ("symbol", "status")]]]


def equity_png(run: BacktestRun, path: str | Path) -> Path:
    """Portfolio equity over time (top) and each symbol's equity in % of its cash, by bar (bottom)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(10, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    if run.portfolio is not None:
        eq = run.portfolio.equity
        top.plot(eq.index, eq.to_numpy(), color="black", lw=1.2)
    top.set_title("portfolio equity (cash split evenly over the symbols)")
    top.set_ylabel("equity")
    for o in run.outcomes:
        if o.backtest is not None:
            r = o.backtest.result
            bottom.plot(
                np.arange(len(r.equity)),
                100 * r.equity.to_numpy() / r.spec.cash,
                lw=0.8,
                label=o.name,
            )
    bottom.axhline(100, color="grey", lw=0.5)
    bottom.set_xlabel("bar")
    bottom.set_ylabel("equity, % of cash")
    if any(o.ok for o in run.outcomes):
        bottom.legend(fontsize=7, loc="best")
    p = Path(path)
    fig.savefig(p, dpi=90)
    return p


def _metrics(run: BacktestRun) -> dict[str, float]:
    out: dict[str, float] = {}
    seen: set[str] = set()
    for o in run.outcomes:
        if o.backtest is None:
            continue
        prefix = metric_prefix(o.name)
        while prefix in seen:  # two symbols that sanitise alike
            prefix += "_"
        seen.add(prefix)
        b = o.backtest
        values = {
            **{k: b.result.stats[k] for k in _TRADE_METRICS},
            **{k: b.model[k] for k in _MODEL_METRICS},
            "train_steps": b.training["steps"],
        }
        out.update({f"{prefix}/{k}": float(v) for k, v in values.items()})
    if run.portfolio is not None:
        out.update({f"portfolio/{k}": float(run.portfolio.stats[k]) for k in _PORTFOLIO_METRICS})
    out["symbols_failed"] = float(len(run.failed))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_mlflow(
    run: BacktestRun, cfg: Config, *, tracker_factory: Callable[..., Any] | None = None
) -> str:
    """One MLflow run in experiment ``<run.name>-backtest``; returns its id."""
    if tracker_factory is None:
        from pipelines.tracking.tracker import Tracker

        tracker_factory = Tracker
    w = run.weights
    tags = {
        "candleray.code_version": code_version(),
        "candleray.kind": "backtest",
        "candleray.weights": f"{w['source']}:{w['version']}",
    }
    if run.failed:
        tags["candleray.failed_symbols"] = "; ".join(
            f"{o.name} ({o.error_type})" for o in run.failed
        )[:4000]
    assert cfg.tracking.uri, "conf.validate.resolve fills tracking.uri"
    tracker = tracker_factory(
        cfg.tracking.uri,
        f"{cfg.run.name}-backtest",
        run_name=f"backtest-{w['source']}-step{w['step']}",
        tags=tags,
    )
    with tracker:
        params = flatten(to_dict(cfg))
        params.update(
            {
                "weights.source": w["source"],
                "weights.version": w["version"],
                "weights.step": w["step"],
                "symbols": ",".join(o.job.symbol for o in run.outcomes),
            }
        )
        if w["source"] == "checkpoint":
            params["checkpoint"] = w["version"]
        tracker.log_params(params)
        tracker.log_metrics(_metrics(run), step=0)
        tracker.flush()
        with tempfile.TemporaryDirectory(prefix="candleray-backtest-") as tmp:
            files = [
                equity_png(run, Path(tmp) / "equity.png"),
                Path(tmp) / "trades.csv",
                write_json(run, cfg, Path(tmp) / "report.json"),
            ]
            trades_frame(run).to_csv(files[1], index=False)
            for f in files:
                tracker.log_artifact(str(f))
        return tracker.run_id


class Progress:
    """``on_done`` for ``run_backtests``: a tqdm bar on a terminal, else one line per finished symbol."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        from tqdm import tqdm

        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.bar = tqdm(
            total=total,
            unit="symbol",
            desc="backtest",
            file=self.stream,
            disable=not self.tty,
            dynamic_ncols=True,
        )

    def __call__(self, outcome: SymbolOutcome, done: int, total: int) -> None:
        if outcome.backtest is None:
            text = f"{outcome.name}: FAILED {outcome.error_type}: {outcome.error}"
        else:
            b = outcome.backtest
            text = (
                f"{b.symbol}: return {100 * b.result.stats['total_return']:+.2f}%, "
                f"{b.result.stats['n_trades']} trades ({b.seconds:.1f}s)"
            )
        if self.tty:
            self.bar.set_postfix_str(text[:60], refresh=False)
            self.bar.update(1)
        else:
            self.stream.write(f"[{done}/{total}] {text}\n")
            self.stream.flush()

    def close(self) -> None:
        self.bar.close()
