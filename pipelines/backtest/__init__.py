"""Backtests: BUY/SELL/HOLD signals on candles -> trades, equity and statistics.

    from pipelines.backtest import simulate, BacktestSpec
    res = simulate(candles, signals, BacktestSpec(commission=0.001, direction="long_short"))

The semantics are explicit (``BacktestSpec``); docs/BACKTEST.md defines each one and every
statistic, and how the defaults match ``backtesting`` 0.6.6.

Model-driven and parallel backtests live in submodules (they import torch and Ray, the
simulator does not): ``model_driven.backtest_model``, ``runner.run_backtests``,
``weights.resolve_weights``, ``portfolio.combine``, ``report.write_json`` / ``log_mlflow``.
"""

from pipelines.backtest.result import TRADE_COLUMNS, BacktestResult, TradeLedger
from pipelines.backtest.semantics import BacktestSpec
from pipelines.backtest.simulator import simulate
from pipelines.backtest.stats import infer_bars_per_year

__all__ = [
    "TRADE_COLUMNS",
    "BacktestResult",
    "BacktestSpec",
    "TradeLedger",
    "infer_bars_per_year",
    "simulate",
]
