"""``simulate``: candles + BUY/SELL/HOLD signals + explicit semantics -> trades, equity, stats."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest import engine
from pipelines.backtest.inputs import check_candles, coerce_signals
from pipelines.backtest.result import BacktestResult, Stats, TradeLedger
from pipelines.backtest.semantics import BacktestSpec
from pipelines.backtest.stats import compute_stats, infer_bars_per_year
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

    >>> res = simulate(candles, model_actions, commission=0.001, direction="long_short")
    >>> res.stats["sharpe"], res.trades[["entry_time", "pnl"]]
    """
    if spec is None:
        spec = BacktestSpec().replace(**options)
    elif not isinstance(spec, BacktestSpec):
        raise BacktestError(
            f"spec must be a BacktestSpec, got {type(spec).__name__}; build one with "
            "BacktestSpec(fill=..., commission=...) or pass the options as keywords"
        )
    elif options:
        spec = spec.replace(**options)
    check_candles(candles, symbol)
    sig = coerce_signals(signals, candles.index, symbol)

    index = candles.index
    open_ = candles["open"].to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    book = engine.run(open_, close, sig, spec)

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
    bpy = spec.bars_per_year if spec.bars_per_year is not None else infer_bars_per_year(index)
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
        bars_per_year=bpy,
    )
    stats["skipped_entries"] = book.skipped_entries
    return BacktestResult(
        symbol=symbol,
        spec=spec,
        ledger=ledger,
        equity=pd.Series(book.equity, index=index, name="equity"),
        position=pd.Series(book.position, index=index, name="position"),
        stats=Stats(stats),
    )
