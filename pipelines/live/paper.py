"""Paper trading of a live session, one bar at a time, with the backtest simulator's semantics.

``pipelines.backtest.engine.run`` walks a whole series; a session sees one bar at a time. This
book keeps the engine's state (cash, signed units, entry price, the side wanted) between bars
and applies the same rules in the same order, so its trades equal ``simulate`` over the same
candles and signals (tested trade for trade):

* the wanted side changes only on BUY/SELL (long-only reads SELL as flat); a change closes what
  is held and opens the new side all-in, at the bar's close (``fill="close"``) or at the next
  bar's open (``"next_open"``);
* sizing is the engine's own ``_units`` (whole or fractional units, entry commission included);
  an entry cash cannot pay is skipped and retried on later bars asking for the same side;
* equity at each close is ``cash + (close·size − size·entry)``; at or below 0 the position is
  closed at that close and the book stops (a wiped-out account);
* each trade's PnL, commission and return come from ``TradeLedger.build``, the simulator's
  definition. A trade still open is marked at the last close (``at_end="mark"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest.engine import _units as all_in_units  # the engine's sizing, not a copy
from pipelines.backtest.result import TradeLedger
from pipelines.backtest.semantics import BacktestSpec


@dataclass
class PaperState:
    """Everything the book needs between bars (JSON-friendly, journaled with the session)."""

    cash: float
    size: float = 0.0  # signed units held
    entry: float = 0.0  # entry price of what is held
    entry_bar: int = -1
    entry_time: int = 0
    want: int = 0  # side wanted now: 1, -1 or 0
    retry: int = 0  # side whose all-in entry was skipped and is retried on its next signal
    order: int | None = None  # next_open: side to fill at the next bar's open (None: nothing)
    order_retry: bool = False  # the pending order is a retry of a skipped entry
    bar: int = -1  # bar index of the last bar opened
    wiped: bool = False
    equity: float = 0.0
    trades: int = 0
    wins: int = 0
    pnl: float = 0.0  # closed trades, after commission
    skipped_entries: int = 0
    mark: float = 0.0  # close of the last bar (marks an open trade)
    time: int = 0  # open time (ns) of the last bar


@dataclass(frozen=True, slots=True)
class Trade:
    """A closed (or, for ``PaperBook.open_trade``, marked) trade; bars count the session's bars."""

    entry_bar: int
    exit_bar: int
    entry_time: int
    exit_time: int
    size: float  # signed units
    entry_price: float
    exit_price: float
    pnl: float
    commission: float
    ret: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}  # numbers: asdict, shallow


def _trade(
    st: PaperState, exit_bar: int, exit_time: int, price: float, rate: float, closed: bool
) -> Trade:
    one = np.array
    led = TradeLedger.build(
        pd.DatetimeIndex([]),
        one([st.entry_bar]),
        one([exit_bar]),
        one([st.size]),
        one([st.entry]),
        one([price]),
        rate,
        n_closed=1 if closed else 0,
    )
    return Trade(
        st.entry_bar,
        exit_bar,
        st.entry_time,
        exit_time,
        st.size,
        st.entry,
        price,
        float(led.pnl[0]),
        float(led.commission[0]),
        float(led.ret[0]),
    )


class PaperBook:
    """Call ``open_bar`` when a bar arrives, then ``close_bar`` with that bar's signal (1/-1/0).

    Both return the trades they closed, in order.
    """

    def __init__(self, spec: BacktestSpec, state: PaperState | None = None) -> None:
        self.spec = spec
        self.st = (
            state
            if state is not None
            else PaperState(cash=float(spec.cash), equity=float(spec.cash))
        )

    def open_bar(self, time: int, open_: float) -> list[Trade]:
        """A new bar: with ``next_open``, fill the order of the previous bar's signal at its open."""
        st = self.st
        st.bar += 1
        st.time = time
        out: list[Trade] = []
        if st.order is not None and not st.wiped:
            side, retry = st.order, st.order_retry
            st.order, st.order_retry = None, False
            out = self._fill(side, open_, retry)
        return out

    def close_bar(self, close: float, signal: int) -> list[Trade]:
        """The bar's close and its signal: change side (fill now or at the next open), mark equity."""
        st = self.st
        st.mark = close
        out: list[Trade] = []
        if not st.wiped:
            retry = False
            if signal:
                want = signal if self.spec.direction == "long_short" else int(signal > 0)
                change = want != st.want
                if change:
                    st.want, st.retry = want, 0
                retry = not change and st.retry != 0 and signal == st.retry
            else:
                change = False
            if change or retry:
                if self.spec.fill == "close":
                    out = self._fill(st.want, close, retry)
                else:
                    st.order, st.order_retry = st.want, retry
            st.equity = st.cash + (close * st.size - st.size * st.entry)
            if st.equity <= 0:
                # out of money (only a short can get there): closed at this close, book stops
                if st.size:
                    out.append(self._exit(close))
                st.equity, st.wiped, st.order = 0.0, True, None
        return out

    def open_trade(self) -> Trade | None:
        """The trade held now, marked at the last close (only its entry commission charged)."""
        st = self.st
        if not st.size:
            return None
        return _trade(st, st.bar, st.time, st.mark, self.spec.commission, False)

    # -- fills ------------------------------------------------------------------------------
    def _exit(self, price: float) -> Trade:
        st = self.st
        c = float(self.spec.commission)
        trade = _trade(st, st.bar, st.time, price, c, True)
        st.cash += st.size * (price - st.entry) - abs(st.size) * price * c
        st.size, st.entry, st.entry_bar = 0.0, 0.0, -1
        st.trades += 1
        st.wins += int(trade.pnl > 0)
        st.pnl += trade.pnl
        return trade

    def _fill(self, side: int, price: float, retry: bool) -> list[Trade]:
        """The engine's change k: close what is held, then open ``side`` all-in (0: stay flat)."""
        st = self.st
        c = float(self.spec.commission)
        out = [self._exit(price)] if st.size and not retry else []
        if side:
            units = all_in_units(st.cash, price, c, self.spec.units == "whole")
            if not units:
                if not retry:
                    st.skipped_entries += 1  # counted once per change, as the engine does
                st.retry = side
                return out
            st.retry = 0
            st.cash -= units * price * c
            st.size = float(units if side > 0 else -units)
            st.entry, st.entry_bar, st.entry_time = price, st.bar, st.time
        return out
