"""Helpers of the live-session tests: settings, synthetic candles, a deterministic fake model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from conf.schema import SyntheticConfig
from pipelines.backtest.semantics import BacktestSpec
from pipelines.data.sources.synthetic import generate
from pipelines.live import Session, SessionSettings, iter_candles, tick


def settings(**changes) -> SessionSettings:
    base = dict(
        window=16,
        extra_timeframes=("4h",),
        pivot_bars=3,
        move_threshold=0.0005,
        confidence=0.4,
        spec=BacktestSpec(commission=0.001, units="fractional"),
        rolling_window=20,
    )
    base.update(changes)
    return SessionSettings(**base)


def synthetic(n: int = 300, symbol: str = "LIVE", timeframe: str = "1h") -> pd.DataFrame:
    return generate(symbol, timeframe, SyntheticConfig(), length=n)


@dataclass(frozen=True)
class Rows:
    candle: np.ndarray
    probs: np.ndarray
    version: int


class FakePredictor:
    """A deterministic function of the window (so replays agree) with varied BUY/SELL/HOLD."""

    def __init__(self, version: int = 7) -> None:
        self.version = version
        self.calls = 0

    def predict(self, x, batch_size: int = 256) -> Rows:
        self.calls += 1
        x = np.asarray(x, dtype=np.float64)  # (B, T, F)
        candle = np.tanh(x[:, -1, :5] - x[:, -2, :5])  # (B, 5)
        logits = np.stack(
            [
                np.zeros(len(x)),
                3 * x[:, -3, 3] - 3 * x[:, -1, 3],
                3 * x[:, -1, 3] - 3 * x[:, -3, 3],
            ],
            axis=1,
        )
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return Rows(candle.astype(np.float32), probs.astype(np.float32), self.version)


def replay(session: Session, frame: pd.DataFrame, predictor=None, **kw):
    """Drive ``session`` over ``frame``; returns (predictions by bar time, samples in order)."""
    predictor = predictor or FakePredictor()
    preds, samples = {}, []
    for c in iter_candles(frame):
        out = tick([(session, c)], predictor, **kw)
        if session.session_id in out:
            preds[c.time] = out[session.session_id]
        samples.extend(session.take_samples())
    return preds, samples
