"""The trade engine: one pass over the bars where the wanted position changes.

Between two changes nothing happens but marking to market, so the Python loop runs once per
position change (not per bar) and the equity of every bar is computed afterwards with
vectorised NumPy from the state each change left behind.

The arithmetic of whole-unit, all-in sizing and of commission follows ``backtesting`` 0.6.6
operation for operation (same operands, same order), so sizes and cash agree to the last bit:

    order size   s = 1 - machine epsilon            (backtesting's default "all of the margin")
    price+fee   ap = p + (s * p * commission) / s
    units        n = int((cash * s) // ap)          (cancelled when n == 0 or n * ap > cash)
    on entry  cash -= n * p * commission
    on exit   cash += size * (exit - entry) - n * exit * commission
    equity       e = cash + (close * size - size * entry)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import numpy as np

from pipelines.backtest.semantics import BacktestSpec

log = logging.getLogger(__name__)

_FULL = 1 - sys.float_info.epsilon  # backtesting's default order size, "all available margin"
_TOGETHER_MIN = 4  # symbols from which stepping them together beats one Python loop each


@dataclass(frozen=True, slots=True)
class Book:
    """Raw outcome of a run: trades in order, equity and position per bar.

    Sizes are signed units (negative = short). The first ``n_closed`` trades are closed; a
    last one beyond them is still open after the last bar (``at_end="mark"``), with the last
    bar and its close as exit bar and price.
    """

    entry_bar: np.ndarray  # (T,) int64
    exit_bar: np.ndarray  # (T,) int64
    size: np.ndarray  # (T,) float64, signed
    entry_price: np.ndarray  # (T,) float64
    exit_price: np.ndarray  # (T,) float64
    n_closed: int
    equity: np.ndarray  # (N,) float64, at each bar's close
    position: np.ndarray  # (N,) float64, signed units held at each bar's close
    skipped_entries: int  # entries not made because cash could not buy one whole unit


def side_changes(sig: np.ndarray, long_short: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bars where the wanted side changes, and the side wanted from each of them on.

    The side wanted after bar i is the last BUY (1) or SELL (-1) up to bar i, 0 before any;
    long-only reads SELL as flat (0). Only BUY/SELL bars can change it, so only they are read.
    """
    at = np.flatnonzero(sig)
    want = sig[at] if long_short else (sig[at] > 0).astype(np.int8)
    prev = np.empty_like(want)
    prev[:1] = 0
    prev[1:] = want[:-1]
    keep = want != prev
    return at[keep], want[keep]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where the wanted side changes and what every change fills at, for one symbol."""

    px: np.ndarray  # (N,) the price every fill happens at, indexed by fill bar
    change: np.ndarray  # (M,) signal bar of each change
    want: np.ndarray  # (M,) int8 side wanted from it on
    fill: np.ndarray  # (M,) bar of each change's fills: close what is held, open what is wanted
    price: np.ndarray  # (M,) fill price


@dataclass(frozen=True, slots=True)
class _Walk:
    """Cash and units after every change (the sequential part), and the state it ends in."""

    cash_e: np.ndarray  # (M,) cash after change k
    size_e: np.ndarray  # (M,) signed units held after change k
    retried: dict[int, tuple[int, float, float]]  # k -> (fill bar, price, cash while flat)
    skipped: int
    cash: float
    size: float
    entry: float


def _plan(open_: np.ndarray, close: np.ndarray, sig: np.ndarray, spec: BacktestSpec) -> _Plan:
    lag = spec.fill_lag
    px = open_ if lag else close
    change, want = side_changes(sig, spec.direction == "long_short")
    keep = change + lag < len(close)  # a signal on the last bar has no next open to fill at
    change, want = change[keep], want[keep]
    fill = change + lag
    return _Plan(px, change, want, fill, px[fill])


def run(open_: np.ndarray, close: np.ndarray, sig: np.ndarray, spec: BacktestSpec) -> Book:
    """Simulate ``sig`` (int8 1/-1/0 per bar) on one symbol's prices under ``spec``."""
    plan = _plan(open_, close, sig, spec)
    return _finish(plan, _walk(plan, sig, spec), close, spec)


def run_many(
    opens: list[np.ndarray], closes: list[np.ndarray], sigs: list[np.ndarray], spec: BacktestSpec
) -> list[Book]:
    """``run`` on many symbols at once, with the same results bit for bit.

    The sequential part steps all symbols together, one NumPy operation over the symbols per
    step instead of one Python step per symbol and change; a symbol that skips an entry (cash
    cannot buy one whole unit: rare) is walked again on its own, as ``run`` does it.
    """
    plans = [_plan(o, c, s, spec) for o, c, s in zip(opens, closes, sigs, strict=True)]
    walks = _walk_together(plans, spec) if len(plans) >= _TOGETHER_MIN else [None] * len(plans)
    return [
        _finish(p, w if w is not None else _walk(p, s, spec), c, spec)
        for p, w, s, c in zip(plans, walks, sigs, closes, strict=True)
    ]


def _walk(plan: _Plan, sig: np.ndarray, spec: BacktestSpec) -> _Walk:
    """The one sequential part: cash after each change decides the next all-in size."""
    c = float(spec.commission)
    whole = spec.units == "whole"
    lag = spec.fill_lag
    px, change = plan.px, plan.change
    cash, size, entry = float(spec.cash), 0.0, 0.0
    cash_after: list[float] = []  # (M,) cash after change k
    size_after: list[float] = []  # (M,) signed units held after change k
    retried: dict[int, tuple[int, float, float]] = {}
    skipped = 0
    for k, (p, w) in enumerate(zip(plan.price.tolist(), plan.want.tolist(), strict=True)):
        if size:
            cash += size * (p - entry) - abs(size) * p * c
            size = 0
        if w:
            # _units(cash, p, c, whole), inlined: this loop is the hot path
            units: float  # a whole number when units are whole
            if cash <= 0:
                units = 0
            elif whole:
                ap = p + (_FULL * p * c) / _FULL
                units = int((cash * _FULL) // ap)
                if units * ap > cash:
                    units = 0
            else:
                units = cash / (p * (1 + c))
            if not units:
                # backtesting cancels the order and stays flat; each later bar asking for this
                # side again, before the wish changes, retries (rare: a wiped-out account)
                skipped += 1
                f, p, units = _retry(sig, w, change, k, lag, px, cash, c, whole)
                if units:
                    retried[k] = (f, p, cash)
            if units:
                cash -= units * p * c
                size = units if w > 0 else -units
                entry = p
        cash_after.append(cash)
        size_after.append(size)
    return _Walk(
        np.asarray(cash_after, dtype=np.float64),
        np.asarray(size_after, dtype=np.float64),
        retried,
        skipped,
        cash,
        size,
        entry,
    )


def _walk_together(plans: list[_Plan], spec: BacktestSpec) -> list[_Walk | None]:
    """``_walk`` of every plan at once; None for a symbol that skips an entry (walk it alone).

    Step k applies every symbol's change k with the same float operations, in the same order,
    as ``_walk`` (NumPy's float ``floor_divide`` is Python's ``//``), so the results are
    identical. Symbols with fewer changes are padded with "flat at price 1" steps, which
    touch nothing that is read back: only their first M entries and the state after change M-1.
    """
    c = float(spec.commission)
    whole = spec.units == "whole"
    s = len(plans)
    m = np.array([len(p.want) for p in plans])
    price = np.ones((int(m.max(initial=0)), s))  # (K, S) step-major: each step reads one row
    want = np.zeros(price.shape, dtype=np.int8)
    for j, p in enumerate(plans):
        price[: m[j], j] = p.price
        want[: m[j], j] = p.want
    cash = np.full(s, float(spec.cash))
    size = np.zeros(s)
    entry = np.zeros(s)
    cash_e, size_e = np.empty(price.shape), np.empty(price.shape)
    skips = np.zeros(s, dtype=bool)
    for k in range(len(price)):
        p, w = price[k], want[k]
        # closing a flat position adds exactly 0.0, as _walk's "if size" skips it
        cash = cash + (size * (p - entry) - np.abs(size) * p * c)
        if whole:
            ap = p + (_FULL * p * c) / _FULL
            units = np.floor_divide(cash * _FULL, ap)
            units[units * ap > cash] = 0.0
        else:
            units = cash / (p * (1 + c))
        wants = w != 0
        units[~wants] = 0.0
        skips |= wants & ((units <= 0) | (cash <= 0))
        cash = cash - units * p * c
        size = np.where(w < 0, -units, units)
        entry = np.where(wants, p, entry)
        cash_e[k] = cash
        size_e[k] = size
    out: list[_Walk | None] = []
    for j in range(s):
        if skips[j]:
            out.append(None)
            continue
        mj = int(m[j])
        cj, sj = cash_e[:mj, j].copy(), size_e[:mj, j].copy()
        last = mj - 1
        out.append(
            _Walk(
                cj,
                sj,
                {},
                0,
                float(cj[last]) if mj else float(spec.cash),
                float(sj[last]) if mj else 0.0,
                float(plans[j].price[last]) if mj and sj[last] else 0.0,
            )
        )
    return out


def _finish(plan: _Plan, walk: _Walk, close: np.ndarray, spec: BacktestSpec) -> Book:
    """Equity and position per bar, and the trade list, from the state after every change."""
    n = len(close)
    c = float(spec.commission)
    px, fill, price = plan.px, plan.fill, plan.price
    cash, size, entry = walk.cash, walk.size, walk.entry
    size_e, cash_e, retried = walk.size_e, walk.cash_e, walk.retried
    if walk.skipped:
        log.warning(
            "%d entr%s skipped: cash could not buy one whole unit (use units='fractional' or more cash)",
            walk.skipped,
            "y was" if walk.skipped == 1 else "ies were",
        )

    m = len(fill)
    entry_bar, entry_price = fill.copy(), price.copy()
    for k, (f, p, _) in retried.items():
        entry_bar[k], entry_price[k] = f, p

    # States in bar order: before bar 0, then the one each change leaves (from its entry bar);
    # a retried entry is flat from the change's fill until the retry fills. Several states on
    # one bar (a reversal) are fine: the bar's close sees the last one.
    s_bar = _prepend(0, entry_bar)
    s_cash = _prepend(float(spec.cash), cash_e)
    s_size = _prepend(0.0, size_e)
    s_entry = _prepend(0.0, entry_price)
    if retried:
        ks = np.fromiter(retried, dtype=np.int64)
        s_bar = np.insert(s_bar, ks + 1, fill[ks])
        s_cash = np.insert(s_cash, ks + 1, [retried[k][2] for k in ks.tolist()])
        s_size = np.insert(s_size, ks + 1, 0.0)
        s_entry = np.insert(s_entry, ks + 1, 0.0)
    lengths = np.diff(s_bar, append=n)  # bars each state lasts (0 when superseded on its bar)
    position = np.repeat(s_size, lengths)
    equity = np.repeat(s_cash, lengths) + (close * position - np.repeat(s_size * s_entry, lengths))

    # Trade k is opened by change k (if anything was bought) and closed by change k + 1.
    opened = np.flatnonzero(size_e)
    closed = opened[opened + 1 < m]
    t_entry_bar = entry_bar[opened]
    t_size = size_e[opened]
    t_entry = entry_price[opened]
    t_exit_bar = fill[closed + 1]
    t_exit = price[closed + 1]
    if len(opened) > len(closed):  # still open after the last bar: marked at the last close
        t_exit_bar = np.append(t_exit_bar, n - 1)
        t_exit = np.append(t_exit, close[n - 1])
    n_closed = len(closed)

    broke = np.flatnonzero(equity <= 0)
    if len(broke):
        # out of money (only a short can get there): liquidate at that close and stop, as
        # backtesting does; changes after it never happen
        j = int(broke[0])
        k = int(np.searchsorted(fill, j, side="right")) - 1  # the change in effect at bar j
        n_closed = int(np.searchsorted(opened, k))  # trades opened before it are closed
        cut = slice(0, n_closed)
        t_entry_bar, t_size, t_entry = t_entry_bar[cut], t_size[cut], t_entry[cut]
        t_exit_bar, t_exit = t_exit_bar[cut], t_exit[cut]
        if size_e[k] and entry_bar[k] <= j:
            t_entry_bar = np.append(t_entry_bar, entry_bar[k])
            t_size = np.append(t_size, size_e[k])
            t_entry = np.append(t_entry, entry_price[k])
            t_exit_bar = np.append(t_exit_bar, j)
            t_exit = np.append(t_exit, close[j])
            n_closed += 1
        equity[j:] = 0.0
        position[j:] = 0.0
    elif size and spec.at_end == "close":
        pf = float(px[n - 1])
        cash += size * (pf - entry) - abs(size) * pf * c
        t_exit[-1] = pf
        n_closed += 1
        equity[n - 1] = cash if cash > 0 else 0.0
        position[n - 1] = 0.0

    return Book(
        entry_bar=t_entry_bar.astype(np.int64),
        exit_bar=t_exit_bar,
        size=t_size,
        entry_price=t_entry,
        exit_price=t_exit,
        n_closed=n_closed,
        equity=equity,
        position=position,
        skipped_entries=walk.skipped,
    )


def _prepend(value: float, arr: np.ndarray) -> np.ndarray:
    out = np.empty(len(arr) + 1, dtype=np.result_type(arr, value))
    out[0] = value
    out[1:] = arr
    return out


def _retry(
    sig: np.ndarray,
    w: int,
    change: np.ndarray,
    k: int,
    lag: int,
    px: np.ndarray,
    cash: float,
    c: float,
    whole: bool,
) -> tuple[int, float, float]:
    """(fill bar, price, units) of the first bar after change k, before the next change, whose
    signal asks for side ``w`` again and whose fill ``cash`` can afford; units 0 if none."""
    before = int(change[k + 1]) if k + 1 < len(change) else len(sig)
    asks = int(change[k]) + 1 + np.flatnonzero(sig[change[k] + 1 : before] == w)
    for j in asks.tolist():
        f = j + lag
        if f >= len(px):
            break
        p = float(px[f])
        units = _units(cash, p, c, whole)
        if units:
            return f, p, units
    return -1, 0.0, 0


def _units(cash: float, p: float, c: float, whole: bool) -> float:
    """Units an all-in entry at price ``p`` buys: 0 when not even one whole unit."""
    if cash <= 0:
        return 0
    if not whole:
        return cash / (p * (1 + c))
    ap = p + (_FULL * p * c) / _FULL
    units = int((cash * _FULL) // ap)
    return 0 if units * ap > cash else units
