"""Batched inference over every window of a symbol, and the signal policy.

Window m ends at bar ``ends[m]`` and uses bars ``ends[m] - T + 1 .. ends[m]`` only, so its
prediction is known at that bar's close. Windows are built by ``make_windows`` (all at once,
or a few batches at a time in ``infer_streamed``) and run through the model in batches;
nothing here loops over single windows in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.data.features import (
    candle_values,
    higher_timeframes,
    make_windows,
    windows_from_values,
)
from pipelines.data.labels import BUY, HOLD, SELL
from pipelines.errors import BacktestError
from serve.predictor import Predictor

# class index (HOLD=0, BUY=1, SELL=2) -> the simulator's signal (0, +1, -1)
_TO_SIGNAL = np.zeros(3, dtype=np.int8)
_TO_SIGNAL[BUY], _TO_SIGNAL[SELL] = 1, -1


@dataclass(frozen=True)
class Windows:
    """Every full window of one symbol: ends (M,) int64, x (M, T, F) float32, sigma (M,) float64."""

    ends: np.ndarray
    x: np.ndarray
    sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.ends)


@dataclass(frozen=True)
class Inference:
    """Model outputs per window: candle (M, 5) normalised next candle, probs (M, 3) HOLD/BUY/SELL."""

    ends: np.ndarray
    candle: np.ndarray
    probs: np.ndarray
    sigma: np.ndarray


def all_windows(
    candles: pd.DataFrame,
    timeframe: str,
    extra_timeframes: Sequence[str],
    window: int,
    symbol: str = "?",
) -> Windows:
    """Windows ending at every bar from ``window - 1`` on, in one call."""
    n = len(candles)
    if n < max(window, 2):
        raise BacktestError(
            f"{symbol}: {n} candles in the range, fewer than the model's window of "
            f"{window} bars (at least {max(window, 2)} needed); widen the range "
            "(--range, backtest.since/until)"
        )
    ends = np.arange(window - 1, n, dtype=np.int64)
    higher = higher_timeframes(candles, timeframe, tuple(extra_timeframes))
    x, sigma = make_windows(candles, window, higher, ends)
    return Windows(ends, x, sigma)


def infer(
    predictor: Predictor,
    w: Windows,
    start: int = 0,
    stop: int | None = None,
    *,
    batch_size: int = 256,
) -> Inference:
    """Predict windows ``start:stop`` in batches of ``batch_size`` (``Predictor.predict``: eval, no grad).

    On CPU a few hundred windows per batch is fastest: larger batches allocate activations
    big enough that every batch maps and zeroes fresh pages (2-3x slower at 4096).
    """
    sl = slice(start, stop)
    p = predictor.predict(w.x[sl], batch_size=batch_size)
    return Inference(w.ends[sl], p.candle, p.probs, w.sigma[sl])


def infer_streamed(
    predictor: Predictor,
    candles: pd.DataFrame,
    timeframe: str,
    extra_timeframes: Sequence[str],
    window: int,
    symbol: str = "?",
    *,
    batch_size: int = 256,
    chunk: int = 512,
) -> Inference:
    """``infer(predictor, all_windows(...))`` without holding every window at once.

    Windows are built ``chunk`` at a time from the bars they need (``chunk + window - 1``
    rows) and predicted straight away: the float64 intermediates of one chunk stay in the
    CPU's cache, where all windows at once (20k x 32 x 9 values per intermediate) stream
    through main memory several times; that was most of the backtest's cost besides the
    forward pass. Every window is computed from the same bars by the same function, so the
    outputs equal the all-at-once path's exactly (tested).
    """
    n = len(candles)
    if n < max(window, 2):
        all_windows(candles, timeframe, extra_timeframes, window, symbol)  # raises its error
    values = candle_values(candles)[1]
    higher = higher_timeframes(candles, timeframe, tuple(extra_timeframes))
    ends = np.arange(window - 1, n, dtype=np.int64)
    m = len(ends)
    candle = np.empty((m, 5), dtype=np.float32)
    probs = np.empty((m, 3), dtype=np.float32)
    sigma = np.empty(m, dtype=np.float64)
    step = max(batch_size, chunk - chunk % batch_size)  # whole batches per chunk, as infer's
    for s in range(0, m, step):
        e = ends[s : s + step]
        lo, hi = int(e[0]) - window + 1, int(e[-1]) + 1
        x, sigma[s : s + len(e)] = windows_from_values(
            values[lo:hi], window, [h[lo:hi] for h in higher], e - lo
        )
        p = predictor.predict(x, batch_size=batch_size)
        candle[s : s + len(e)], probs[s : s + len(e)] = p.candle, p.probs
    return Inference(ends, candle, probs, sigma)


def concat(parts: Sequence[Inference]) -> Inference:
    return Inference(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("ends", "candle", "probs", "sigma")
        )
    )


def confidence_actions(probs: np.ndarray, confidence: float) -> np.ndarray:
    """(M, 3) probabilities → (M,) actions: the most likely one if its probability ≥ ``confidence``, else HOLD.

    Ties go to the lower class index (HOLD before BUY before SELL), as ``argmax`` does.
    """
    best = probs.argmax(axis=1)
    p_best = np.take_along_axis(probs, best[:, None], axis=1)[:, 0]
    return np.where(p_best >= confidence, best, HOLD).astype(np.int64)


def bar_actions(n_bars: int, ends: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(N,) action per bar: ``actions[m]`` at bar ``ends[m]``; HOLD where no full window ends."""
    out = np.full(n_bars, HOLD, dtype=np.int64)
    out[ends] = actions
    return out


def trade_signals(actions: np.ndarray) -> np.ndarray:
    """HOLD/BUY/SELL class indices → the simulator's 0 / +1 / -1."""
    return _TO_SIGNAL[actions]
