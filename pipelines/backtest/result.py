"""What a backtest returns: trades, equity and position per bar, statistics, and the spec used."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from pipelines.backtest.semantics import BacktestSpec
from pipelines.backtest.stats import index_ns

TRADE_COLUMNS: tuple[str, ...] = (
    "entry_bar",
    "exit_bar",
    "entry_time",
    "exit_time",
    "side",
    "size",
    "entry_price",
    "exit_price",
    "pnl",
    "commission",
    "return",
)


class Stats(dict):
    """Statistics of a run: a read-only dict, so it still pickles and JSON-serialises."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("backtest statistics are read-only; use dict(stats) for a copy to change")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]
    __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict]]:
        return (Stats, (dict(self),))


@dataclass(frozen=True, slots=True, eq=False)
class TradeLedger:
    """Every trade as NumPy arrays (T,), in order; the first ``n_closed`` are closed.

    A trade beyond them is still open after the last bar: its exit bar and price are the last
    bar and its close (a mark, not a fill), and only its entry commission is charged.
    ``size`` is signed (negative = short). Commission is units x price x rate on each side, so
    ``pnl = size x (exit - entry) - commission`` and
    ``ret = side x (exit / entry - 1) - commission / (units x entry)`` (= pnl / (units x entry)).
    """

    index: pd.DatetimeIndex  # the candles' index, for entry and exit times
    entry_bar: np.ndarray  # int64
    exit_bar: np.ndarray  # int64
    size: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    commission: np.ndarray
    pnl: np.ndarray
    ret: np.ndarray
    n_closed: int

    @classmethod
    def build(
        cls,
        index: pd.DatetimeIndex,
        entry_bar: np.ndarray,
        exit_bar: np.ndarray,
        size: np.ndarray,
        entry_price: np.ndarray,
        exit_price: np.ndarray,
        rate: float,
        n_closed: int,
    ) -> TradeLedger:
        units = np.abs(size)
        fee_out = units * exit_price * rate
        fee_out[n_closed:] = 0.0
        commission = fee_out + units * entry_price * rate
        pnl = size * (exit_price - entry_price) - commission
        ret = np.sign(size) * (exit_price / entry_price - 1) - commission / (units * entry_price)
        return cls(
            index,
            entry_bar,
            exit_bar,
            size,
            entry_price,
            exit_price,
            commission,
            pnl,
            ret,
            n_closed,
        )

    def frame(self, rows: slice) -> pd.DataFrame:
        """The trades in ``rows`` as a DataFrame with ``TRADE_COLUMNS``."""
        size = self.size[rows]
        t_ns = index_ns(self.index)
        return pd.DataFrame(
            {
                "entry_bar": self.entry_bar[rows],
                "exit_bar": self.exit_bar[rows],
                "entry_time": pd.DatetimeIndex(t_ns[self.entry_bar[rows]].view("M8[ns]"), tz="UTC"),
                "exit_time": pd.DatetimeIndex(t_ns[self.exit_bar[rows]].view("M8[ns]"), tz="UTC"),
                "side": np.where(size > 0, "long", "short"),
                "size": np.abs(size),
                "entry_price": self.entry_price[rows],
                "exit_price": self.exit_price[rows],
                "pnl": self.pnl[rows],
                "commission": self.commission[rows],
                "return": self.ret[rows],
            },
            columns=list(TRADE_COLUMNS),
        )


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """The outcome of ``simulate`` for one symbol.

    trades: closed trades in order, one row each, columns ``TRADE_COLUMNS``: bars and times
        of entry and exit fills, ``side`` ("long"/"short"), ``size`` (units, > 0), fill prices,
        ``pnl`` (cash, after both commissions), ``commission`` (entry + exit, cash), ``return``
        (pnl / (size x entry price)). Built from ``ledger`` on first access.
    open_trades: the trade still open after the last bar (0 or 1 row, same columns) when
        ``at_end="mark"``: exit bar/time/price are the last bar and its close, ``pnl`` is marked
        to market after the entry commission, ``commission`` is the entry commission only.
    ledger: the same trades as NumPy arrays (cheap; what statistics are computed from).
    equity: cash + marked value of the position at each bar's close (index = candles' index);
        built on first access from ``equity_values``, the same numbers as an array (N,).
    position: signed units held at each bar's close (negative = short); built on first access
        from ``position_values`` (N,).
    stats: read-only dict of statistics (see ``pipelines.backtest.stats``).
    """

    symbol: str
    spec: BacktestSpec
    ledger: TradeLedger
    equity_values: np.ndarray
    position_values: np.ndarray
    stats: Stats

    @cached_property
    def equity(self) -> pd.Series:
        return pd.Series(self.equity_values, index=self.ledger.index, name="equity")

    @cached_property
    def position(self) -> pd.Series:
        return pd.Series(self.position_values, index=self.ledger.index, name="position")

    @cached_property
    def trades(self) -> pd.DataFrame:
        return self.ledger.frame(slice(0, self.ledger.n_closed))

    @cached_property
    def open_trades(self) -> pd.DataFrame:
        return self.ledger.frame(slice(self.ledger.n_closed, None))
