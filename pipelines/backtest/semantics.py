"""The explicit semantics of a backtest: when orders fill, what they cost, what may be held.

``BacktestSpec`` is a small frozen value object passed to ``simulate``. Its defaults are the
semantics of ``backtesting`` 0.6.6 driven with ``exclusive_orders=True`` and default order
sizes (see docs/BACKTEST.md), long-only; the simulator matches that library trade for trade
when configured so.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.errors import BacktestError

Fill = Literal["next_open", "close"]
Direction = Literal["long_only", "long_short"]
Units = Literal["whole", "fractional"]
AtEnd = Literal["mark", "close"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "fill": ("next_open", "close"),
    "direction": ("long_only", "long_short"),
    "units": ("whole", "fractional"),
    "at_end": ("mark", "close"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestSpec:
    """How signals become trades. All fields are keyword-only; every value is checked on creation.

    cash: starting cash (> 0). Each symbol has its own.
    commission: fraction of traded value (units × fill price), 0 <= commission < 1, charged on
        entry and again on exit. It is paid from cash; fill prices are not adjusted.
    fill: ``"next_open"``: a signal seen at bar i's close fills at bar i+1's open (a signal on
        the last bar never fills). ``"close"``: it fills at bar i's own close.
    direction: ``"long_only"``: BUY opens a long, SELL closes it (a SELL while flat does nothing).
        ``"long_short"``: stop-and-reverse; BUY closes a short and opens a long, SELL closes a
        long and opens a short. In both, a signal for the side already held does nothing.
    units: ``"whole"``: all-in, the largest whole number of units that cash buys with its entry
        commission (as ``backtesting``); ``"fractional"``: exactly all cash, entry commission included.
    at_end: ``"mark"``: a trade still open after the last bar stays open, marked to market at the
        last close (reported in ``BacktestResult.open_trades``, not counted as a trade);
        ``"close"``: it is closed at the last price the fill rule can reach (the last bar's open
        for ``next_open``, its close for ``close``) and counted, as ``finalize_trades=True``.
    bars_per_year: periods per year for annualised statistics; ``None`` infers it from the
        candles (see ``pipelines.backtest.stats.infer_bars_per_year``).
    """

    cash: float = 10_000.0
    commission: float = 0.0
    fill: Fill = "next_open"
    direction: Direction = "long_only"
    units: Units = "whole"
    at_end: AtEnd = "mark"
    bars_per_year: float | None = None

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise BacktestError(
                    f"backtest {name}={value!r} is not allowed; choose one of {list(choices)}"
                )
        _check_number("cash", self.cash, "starting cash must be > 0, e.g. cash=10_000")
        if self.cash <= 0:
            raise BacktestError(
                f"backtest cash={self.cash!r} is not allowed; starting cash must be > 0, "
                "e.g. cash=10_000"
            )
        _check_number(
            "commission", self.commission, "use a fraction, e.g. commission=0.001 for 0.1 %"
        )
        if not 0 <= self.commission < 1:
            raise BacktestError(
                f"backtest commission={self.commission!r} is not allowed; it is a fraction of "
                "traded value with 0 <= commission < 1 (e.g. 0.001 for 0.1 % per side)"
            )
        if self.bars_per_year is not None:
            _check_number("bars_per_year", self.bars_per_year, "or leave it None to infer it")
            if self.bars_per_year <= 0:
                raise BacktestError(
                    f"backtest bars_per_year={self.bars_per_year!r} is not allowed; it must be > 0 "
                    "(e.g. 252 for daily equities, 8766 for hourly 24/7 markets) or None to infer it"
                )

    @property
    def fill_lag(self) -> int:
        """Bars between the signal and its fill: 1 for ``next_open``, 0 for ``close``."""
        return 1 if self.fill == "next_open" else 0

    def replace(self, **changes: Any) -> BacktestSpec:
        """A copy with ``changes`` applied; unknown names are a ``BacktestError``."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise BacktestError(f"unknown backtest option(s) {unknown}; the options are {known}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The resolved semantics, for reports and MLflow params."""
        return dataclasses.asdict(self)


def _check_number(name: str, value: object, hint: str) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise BacktestError(
            f"backtest {name}={value!r} is not allowed; it must be a finite number ({hint})"
        )
