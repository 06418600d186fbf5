"""``simulate``: candles + BUY/SELL/HOLD signals + explicit semantics -> trades, equity, stats."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest import engine
from pipelines.backtest.engine import Book
from pipelines.backtest.inputs import candle_arrays, coerce_signals
from pipelines.backtest.result import BacktestResult, Stats, TradeLedger
from pipelines.backtest.semantics import BacktestSpec
from pipelines.backtest.stats import bars_per_year_of, compute_stats
from pipelines.errors import BacktestError


def simulate(
    candles: pd.DataFrame,
    signals: object,
    spec: BacktestSpec | None = None,
    *,
    symbol: str = "?",
    **options: Any,
) -> BacktestResult:
    """Trade ``signals`` on ``candles`` and report trades, equity and statistics.

    candles: the candle schema (``pipelines.data.candles``), at least 2 bars.
    signals: one per candle: 1 / -1 / 0 or "BUY" / "SELL" / "HOLD" (array, list, or a Series
        on the candles' index). The signal of bar i is acted on at bar i's close.
    spec: the semantics; ``options`` (any ``BacktestSpec`` field, e.g. ``fill="close"``,
        ``commission=0.001``) override it, or the defaults when ``spec`` is None.
    symbol: names the symbol in errors.

    Every input is checked before anything runs: ``CandleValidationError`` for candles,
    ``BacktestError`` for signals and options, each naming the problem and the fix.
    Many symbols under one spec: ``pipelines.backtest.batch.simulate_many`` (same results).

    >>> res = simulate(candles, model_actions, commission=0.001, direction="long_short")
    >>> res.stats["sharpe"], res.trades[["entry_time", "pnl"]]
    """
    spec = resolve_spec(spec, options)
    t_ns, open_, close = candle_arrays(candles, symbol)
    sig = coerce_signals(signals, candles.index, symbol)
    book = engine.run(open_, close, sig, spec)
    bpy = spec.bars_per_year if spec.bars_per_year is not None else bars_per_year_of(t_ns)
    return build_result(symbol, spec, candles.index, t_ns, close, book, bpy)


def resolve_spec(spec: BacktestSpec | None, options: dict[str, Any]) -> BacktestSpec:
    """``spec`` with ``options`` applied (the defaults when ``spec`` is None); checked."""
    if spec is None:
        return BacktestSpec().replace(**options)
    if not isinstance(spec, BacktestSpec):
        raise BacktestError(
            f"spec must be a BacktestSpec, got {type(spec).__name__}; build one with "
            "BacktestSpec(fill=..., commission=...) or pass the options as keywords"
        )
    return spec.replace(**options) if options else spec


def build_result(
    symbol: str,
    spec: BacktestSpec,
    index: pd.DatetimeIndex,
    t_ns: np.ndarray,
    close: np.ndarray,
    book: Book,
    bars_per_year: float,
) -> BacktestResult:
    """Trades, statistics and the result of one symbol's ``Book``."""
    ledger = TradeLedger.build(
        index,
        book.entry_bar,
        book.exit_bar,
        book.size,
        book.entry_price,
        book.exit_price,
        spec.commission,
        n_closed=book.n_closed,
    )
    closed = slice(0, book.n_closed)
    stats = compute_stats(
        equity=book.equity,
        index=index,
        close=close,
        cash=spec.cash,
        pnl=ledger.pnl[closed],
        returns=ledger.ret[closed],
        held_from=book.entry_bar,
        held_to=book.exit_bar,
        commissions=float(ledger.commission.sum()),
        bars_per_year=bars_per_year,
        t_ns=t_ns,
    )
    stats["skipped_entries"] = book.skipped_entries
    return BacktestResult(
        symbol=symbol,
        spec=spec,
        ledger=ledger,
        equity_values=book.equity,
        position_values=book.position,
        stats=Stats(stats),
    )
