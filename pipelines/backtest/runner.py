"""Many symbols in parallel: one Ray task per (symbol, range), gathered as they finish.

The weights go into the object store once (``ray.put``) and every task gets the same ref.
Each task loads its candles and runs ``backtest_model`` (no Ray inside), and returns only what
the reports use (``for_report``), so a run over many symbols does not carry every symbol's
per-window model outputs into the driver. A symbol that fails
(unknown symbol, bad timeframe, bad data, too few bars) comes back as an outcome carrying
its error's type and message; the others finish. Outcomes are returned in the order of the
jobs, whatever order they finished in, with the portfolio view over the symbols that ran.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from conf import Config
from pipelines.backtest.model_driven import ModelBacktest, backtest_model, for_report
from pipelines.backtest.portfolio import Portfolio, combine
from pipelines.backtest.weights import BacktestWeights
from pipelines.data.sources import load_candles, parse_symbol
from pipelines.placement import Request, check_cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BacktestJob:
    """One symbol over one range; ``since``/``until`` None: ``backtest.since/until``, then ``data.*``.

    range_from: what set the range (``--range``, ``backtest.since/backtest.until`` ...), named
    when the range holds no candles; None: worked out from the job and the config.
    """

    symbol: str
    since: str | None = None
    until: str | None = None
    range_from: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SymbolOutcome:
    """The result of one job: ``backtest`` when it ran, else ``error`` and ``error_type``."""

    job: BacktestJob
    backtest: ModelBacktest | None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.backtest is not None

    @property
    def name(self) -> str:
        return self.backtest.symbol if self.backtest is not None else self.job.symbol


@dataclass(frozen=True)
class BacktestRun:
    outcomes: tuple[SymbolOutcome, ...]
    portfolio: Portfolio | None  # None when no symbol ran
    weights: dict[str, Any]  # BacktestWeights.describe()
    seconds: float

    @property
    def failed(self) -> list[SymbolOutcome]:
        return [o for o in self.outcomes if not o.ok]


def _bounds(job: BacktestJob, cfg: Config) -> tuple[str | None, str | None]:
    """The job's own range; where a side is None, ``backtest.since/until``, then ``data.*``."""

    def pick(*values: str | None) -> str | None:
        return next((v for v in values if v is not None), None)

    return (
        pick(job.since, cfg.backtest.since, cfg.data.since),
        pick(job.until, cfg.backtest.until, cfg.data.until),
    )


def _range_from(job: BacktestJob, cfg: Config) -> str | None:
    """The option(s) that set the job's range, for the error when it holds no candles."""
    if job.range_from is not None:
        return job.range_from
    names = []
    for side, own, bt, data in (
        ("since", job.since, cfg.backtest.since, cfg.data.since),
        ("until", job.until, cfg.backtest.until, cfg.data.until),
    ):
        if own is not None:
            names.append(f"the job's {side}")
        elif bt is not None:
            names.append(f"backtest.{side}")
        elif data is not None:
            names.append(f"data.{side}")
    return "/".join(names) or None  # no range: the whole series


def jobs_for(
    symbols: Sequence[str], cfg: Config, *, range_from: str | None = None
) -> list[BacktestJob]:
    """One job per symbol over ``backtest.since/until`` (``data.since/until`` where unset).

    range_from: what set the range, when not the config (the CLI passes ``--range``).
    """
    origin = range_from or _range_from(BacktestJob(""), cfg)
    return [BacktestJob(s, *_bounds(BacktestJob(s), cfg), range_from=origin) for s in symbols]


def task_request(cfg: Config) -> Request:
    """What one symbol task asks Ray for: ``backtest.task_num_cpus`` and ``task_resources``."""
    b = cfg.backtest
    return Request(
        "a backtest task",
        b.task_num_cpus,
        "backtest.task_num_cpus",
        b.task_resources,
        "backtest.task_resources",
    )


def run_job(job: BacktestJob, weights: BacktestWeights, cfg: Config) -> ModelBacktest:
    """Load one symbol's candles over the job's range and backtest it (plain, in this process)."""
    spec = parse_symbol(job.symbol, cfg.data.timeframe)
    since, until = _bounds(job, cfg)
    data = dataclasses.replace(cfg.data, since=since, until=until)
    candles = load_candles(spec, data, range_from=_range_from(job, cfg))
    return backtest_model(candles, weights, cfg, timeframe=spec.timeframe, symbol=spec.key)


@ray.remote
def _job_task(
    job: BacktestJob, weights: BacktestWeights, cfg: Config, torch_threads: int
) -> ModelBacktest:
    import torch

    torch.set_num_threads(torch_threads)  # a worker is reused: set it for every task
    return for_report(run_job(job, weights, cfg))


def _failure(job: BacktestJob, exc: BaseException) -> SymbolOutcome:
    cause = (
        exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
    )
    message = str(cause).strip() or type(cause).__name__
    log.warning("backtest of %s failed: %s: %s", job.symbol, type(cause).__name__, message)
    return SymbolOutcome(job, None, message, type(cause).__name__)


def _portfolio(outcomes: Sequence[SymbolOutcome], cfg: Config) -> Portfolio | None:
    ran = [(o, o.backtest) for o in outcomes if o.backtest is not None]
    if not ran:
        return None
    curves, initial, timeframes = {}, {}, {}
    for i, (o, b) in enumerate(ran):
        key = (
            b.symbol if b.symbol not in curves else f"{b.symbol}#{i}"
        )  # one symbol over two ranges
        curves[key], initial[key] = b.result.equity, b.result.spec.cash
        timeframes[key] = parse_symbol(o.job.symbol, cfg.data.timeframe).timeframe  # as run_job
    return combine(
        curves, initial, cfg.backtest.cash, cfg.backtest.bars_per_year, timeframes=timeframes
    )


def run_backtests(
    jobs: Sequence[BacktestJob],
    weights: BacktestWeights,
    cfg: Config,
    *,
    on_done: Callable[[SymbolOutcome, int, int], None] | None = None,
    torch_threads: int | None = None,
) -> BacktestRun:
    """Run every job as a Ray task (``task_request``: ``backtest.task_num_cpus`` CPUs and
    ``backtest.task_resources`` each) and gather them. A request no node can meet is a
    ``PlacementError`` before any task starts (tasks that wait for busy CPUs just queue).

    ``on_done(outcome, n_done, n_total)`` is called as each one finishes (progress).
    ``torch_threads``: intra-op threads per task; default: the task's CPUs, at least 1.
    Ray must be initialised (``pipelines.cluster.init_ray``).
    """
    t0 = time.perf_counter()
    ncpu = cfg.backtest.task_num_cpus
    threads = torch_threads or max(1, math.floor(ncpu))
    request = task_request(cfg)
    check_cluster(request)
    weights_ref = ray.put(weights)  # once; every task gets the same object
    task = _job_task.options(**request.options())
    refs = [task.remote(job, weights_ref, cfg, threads) for job in jobs]
    index = {ref.hex(): i for i, ref in enumerate(refs)}  # ids, not refs: a gathered one is let go
    outcomes: list[SymbolOutcome | None] = [None] * len(jobs)
    pending = refs
    del refs
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        i = index.pop(ready[0].hex())
        try:
            outcomes[i] = SymbolOutcome(jobs[i], ray.get(ready[0]))  # finished: returns at once
        except ray.exceptions.RayError as exc:  # the task's own error, or its worker died
            outcomes[i] = _failure(jobs[i], exc)
        if on_done is not None:
            on_done(outcomes[i], len(jobs) - len(pending), len(jobs))  # type: ignore[arg-type]
    done = tuple(o for o in outcomes if o is not None)
    return BacktestRun(done, _portfolio(done, cfg), weights.describe(), time.perf_counter() - t0)


def run_in_process(
    jobs: Sequence[BacktestJob],
    weights: BacktestWeights,
    cfg: Config,
    *,
    on_done: Callable[[SymbolOutcome, int, int], None] | None = None,
) -> BacktestRun:
    """The same as ``run_backtests``, one job after another in this process (no Ray)."""
    from pipelines.errors import CandlerayError

    t0 = time.perf_counter()
    outcomes = []
    for k, job in enumerate(jobs):
        try:
            outcomes.append(SymbolOutcome(job, for_report(run_job(job, weights, cfg))))
        except (CandlerayError, ValueError) as exc:  # a bad symbol or data; a bug still raises
            outcomes.append(_failure(job, exc))
        if on_done is not None:
            on_done(outcomes[-1], k + 1, len(jobs))
    return BacktestRun(
        tuple(outcomes), _portfolio(outcomes, cfg), weights.describe(), time.perf_counter() - t0
    )
