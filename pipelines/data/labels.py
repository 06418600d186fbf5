"""Action labels: confirmed pivots and price moves.

Class indices are shared by the model, the backtester and the API:
HOLD = 0, BUY = 1, SELL = 2. ``UNKNOWN = -1`` marks bars whose label needs the future.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

HOLD, BUY, SELL = 0, 1, 2
UNKNOWN = -1
ACTIONS: tuple[str, str, str] = ("HOLD", "BUY", "SELL")


def pivot_flags(high: np.ndarray, low: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Swing highs / lows with ``n`` bars on each side: (is_high, is_low), each (N,) bool.

    Bar i is a high pivot if high[i] is above the n highs before it and not below the n
    highs after it (the first bar of a plateau wins); lows mirror that. Bars within n of
    either end are never pivots: the bars that would confirm them do not exist yet.
    """
    size = len(high)
    is_high = np.zeros(size, dtype=bool)
    is_low = np.zeros(size, dtype=bool)
    if size < 2 * n + 1:
        return is_high, is_low
    hw = sliding_window_view(high, 2 * n + 1)  # (N-2n, 2n+1), centre at column n
    lw = sliding_window_view(low, 2 * n + 1)
    centre_h, centre_l = hw[:, n], lw[:, n]
    is_high[n : size - n] = (centre_h > hw[:, :n].max(axis=1)) & (
        centre_h >= hw[:, n + 1 :].max(axis=1)
    )
    is_low[n : size - n] = (centre_l < lw[:, :n].min(axis=1)) & (
        centre_l <= lw[:, n + 1 :].min(axis=1)
    )
    return is_high, is_low


def pivots(candles: pd.DataFrame, n: int) -> pd.DataFrame:
    """Pivot table: bar, time, kind ('H' or 'L'), price, confirmed_bar (= bar + n), confirmed_time.

    A pivot at bar i is known only once bar i + n has closed (``confirmed_bar``).
    """
    is_high, is_low = pivot_flags(candles["high"].to_numpy(), candles["low"].to_numpy(), n)
    rows = []
    for kind, flags, col in (("H", is_high, "high"), ("L", is_low, "low")):
        for i in np.flatnonzero(flags):
            rows.append(
                (
                    int(i),
                    candles.index[i],
                    kind,
                    float(candles[col].iat[i]),
                    int(i + n),
                    candles.index[i + n],
                )
            )
    out = pd.DataFrame(
        rows, columns=["bar", "time", "kind", "price", "confirmed_bar", "confirmed_time"]
    )
    return out.sort_values(["bar", "kind"]).reset_index(drop=True)


def pivot_actions(high: np.ndarray, low: np.ndarray, n: int) -> np.ndarray:
    """BUY at low pivots, SELL at high pivots, UNKNOWN elsewhere (and where a bar is both)."""
    is_high, is_low = pivot_flags(high, low, n)
    out = np.full(len(high), UNKNOWN, dtype=np.int64)
    out[is_low & ~is_high] = BUY
    out[is_high & ~is_low] = SELL
    return out


def move_actions(close: np.ndarray, threshold: float) -> np.ndarray:
    """For bar i: BUY if close[i+1]/close[i] - 1 > threshold, SELL if < -threshold, else HOLD.

    The last bar has no next close: UNKNOWN.
    """
    out = np.full(len(close), UNKNOWN, dtype=np.int64)
    if len(close) < 2:
        return out
    move = close[1:] / close[:-1] - 1.0
    out[:-1] = np.where(move > threshold, BUY, np.where(move < -threshold, SELL, HOLD))
    return out


def action_labels(candles: pd.DataFrame, pivot_bars: int, move_threshold: float) -> np.ndarray:
    """The per-candle training label: the pivot action where bar i is a pivot, else the price move."""
    high, low, close = (candles[c].to_numpy(dtype="float64") for c in ("high", "low", "close"))
    return labels_from_values(high, low, close, pivot_bars, move_threshold)


def labels_from_values(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, pivot_bars: int, move_threshold: float
) -> np.ndarray:
    """``action_labels`` on the high, low and close arrays."""
    piv = pivot_actions(high, low, pivot_bars)
    move = move_actions(close, move_threshold)
    return np.where(piv != UNKNOWN, piv, move)
