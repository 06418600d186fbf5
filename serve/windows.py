"""A window of candles → the model input, and a model answer → prices and a signal.

Plain code for any caller of the predictor (the HTTP ingress, scripts). The input is built
by the training code itself (``pipelines.data.features``: ``higher_timeframes`` then
``make_windows`` for the last bar, in their array forms), so served features cannot drift
from trained ones; the
ghost candle is ``features.denormalise``; the signal is the backtests' confidence rule
(``pipelines.backtest.inference.confidence_actions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipelines.backtest.inference import confidence_actions, trade_signals
from pipelines.data.candles import check_values, timeframe_seconds, validate_candles
from pipelines.data.features import (
    candle_values,
    denormalise,
    higher_from_values,
    windows_from_values,
)
from pipelines.data.labels import ACTIONS
from pipelines.errors import InvalidInputError


class Bars(NamedTuple):
    """Candles as arrays: (N,) open times in ns since the epoch (UTC), oldest first, and
    (N, 5) float64 o/h/l/c/v (``pipelines.data.features.candle_values`` of a frame)."""

    times_ns: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class ModelInput:
    """x (1, T, F) float32 for the window ending at ``end`` (the last candle's open time).

    ``anchor_close`` (that candle's close), ``sigma`` and ``log_volume_mean`` (the window's
    mean log1p volume) turn the answer back into prices and volume (``interpret``); the
    predicted candle opens at ``next_time``.
    """

    x: np.ndarray
    end: pd.Timestamp
    next_time: pd.Timestamp
    anchor_close: float
    sigma: float
    log_volume_mean: float


@dataclass(frozen=True)
class Signal:
    """A prediction in the user's terms: the predicted next candle (the ghost candle: its
    open time, prices and volume), the action probabilities, the action taken and its
    simulator signal (+1 buy, -1 sell, 0 hold)."""

    time: pd.Timestamp
    ghost: dict[str, float]
    probs: dict[str, float]
    action: str
    signal: int


def model_input(
    candles: pd.DataFrame,
    window: int,
    timeframe: str,
    extra_timeframes: Sequence[str] = (),
    symbol: str = "?",
) -> ModelInput:
    """The model input for the window ending at the last of ``candles`` (the candle schema).

    Needs at least ``window`` candles; with extra timeframes, more history gives the
    window's early bars their closed higher candles, as in training.
    Raises CandleValidationError for a frame that breaks the schema, InvalidInputError
    when it is too short.
    """
    validate_candles(candles, symbol)
    return _model_input(*candle_values(candles), window, timeframe, extra_timeframes, symbol)


def model_input_from_values(
    times_ns: np.ndarray,
    values: np.ndarray,
    window: int,
    timeframe: str,
    extra_timeframes: Sequence[str] = (),
    symbol: str = "?",
) -> ModelInput:
    """``model_input`` on arrays: (N,) open times in ns since the epoch (UTC), oldest first,
    and (N, 5) float64 o/h/l/c/v; the same rows are refused (CandleValidationError)."""
    check_values(times_ns, values, symbol)
    return _model_input(times_ns, values, window, timeframe, extra_timeframes, symbol)


def _model_input(
    times_ns: np.ndarray,
    values: np.ndarray,
    window: int,
    timeframe: str,
    extra_timeframes: Sequence[str],
    symbol: str,
) -> ModelInput:
    n = len(values)
    if n < max(window, 2):
        raise InvalidInputError(
            f"{symbol}: {n} candles given; the model reads windows of {window} "
            f"(send at least {max(window, 2)} candles, the newest last)"
        )
    higher = higher_from_values(times_ns, values, timeframe, tuple(extra_timeframes))
    x, sigma = windows_from_values(values, window, higher, np.array([n - 1], dtype=np.int64))
    end = int(times_ns[-1])
    log_v = np.log1p(values[-window:, 4])
    return ModelInput(
        x,
        pd.Timestamp(end, tz="UTC"),
        pd.Timestamp(end + timeframe_seconds(timeframe) * 1_000_000_000, tz="UTC"),
        float(values[-1, 3]),
        float(sigma[0]),
        float(log_v.mean()),
    )


def interpret(
    candle: Sequence[float], probs: Sequence[float], inp: ModelInput, confidence: float
) -> Signal:
    """One answer (normalised candle (5,), probs (3,)) for ``inp`` → ghost candle and signal."""
    pred = np.asarray(candle, dtype=np.float64)[None, :]  # (1, 5)
    prices = denormalise(pred, np.array([inp.anchor_close]), np.array([inp.sigma]))[0]  # (4,)
    # the volume target is log1p(volume) minus the window's mean log1p(volume) (features.py)
    volume = max(float(np.expm1(pred[0, 4] + inp.log_volume_mean)), 0.0)
    p = np.asarray(probs, dtype=np.float64)[None, :]  # (1, 3)
    action = confidence_actions(p, confidence)
    return Signal(
        time=inp.next_time,
        ghost={
            **dict(zip(("open", "high", "low", "close"), map(float, prices), strict=True)),
            "volume": volume,
        },
        probs=dict(zip(ACTIONS, map(float, p[0]), strict=True)),
        action=ACTIONS[int(action[0])],
        signal=int(trade_signals(action)[0]),
    )
