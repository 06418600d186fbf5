"""Model-driven backtest of one symbol: weights + candles → predictions → signals → trades.

1. Every full window, built a few batches at a time and predicted straight away
   (``inference.infer_streamed``: batched ``Predictor.predict``). With ``backtest.walk_forward``
   set, all windows at once (``inference.all_windows``: the training samples are windows too),
   predicted chunk by chunk with a private copy that trains as labels become known
   (``walk_forward``).
3. The policy: the most likely action if its probability >= ``backtest.confidence``, else
   HOLD; bars before the first full window are HOLD.
4. ``simulate`` with the ``backtest:`` semantics (the signal of bar i acts at bar i's close).

Besides trading statistics, the model is scored against what happened: action accuracy and
confusion matrix against ``action_labels``, next-close direction accuracy and close error.
Plain functions, no Ray: the runner calls ``backtest_model`` inside its tasks.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from conf import Config
from pipelines.backtest.config import backtest_spec
from pipelines.backtest.inference import (
    Inference,
    all_windows,
    bar_actions,
    confidence_actions,
    infer_streamed,
    trade_signals,
)
from pipelines.backtest.result import BacktestResult
from pipelines.backtest.simulator import simulate
from pipelines.backtest.walk_forward import TrainRound, label_known_at, walk_forward
from pipelines.backtest.weights import BacktestWeights
from pipelines.data.labels import ACTIONS, UNKNOWN, action_labels
from pipelines.model.direction import direction_accuracy
from serve.predictor import Predictor


@dataclass(frozen=True)
class ModelBacktest:
    """The outcome for one symbol.

    result: the simulator's trades, equity and statistics.
    actions: (N,) HOLD/BUY/SELL class per bar (the signals traded).
    inference: the model outputs per window; None in the runner's outcomes, which keep only
        what the reports use (``for_report``).
    model: model statistics (``model_stats``) plus signal counts.
    training: walk-forward summary (mode, rounds, steps, samples); rounds: each training round.
    seconds: wall time of the whole backtest of this symbol.
    """

    symbol: str
    result: BacktestResult
    actions: np.ndarray
    inference: Inference | None
    model: dict[str, Any]
    training: dict[str, Any]
    rounds: tuple[TrainRound, ...]
    seconds: float


def for_report(b: ModelBacktest) -> ModelBacktest:
    """``b`` without its per-window model outputs, which no report reads.

    They are most of a symbol's result (52 bytes a window beside the equity, position and
    actions' 24 a bar): a runner over 1,000 symbols of 10,000 bars would otherwise carry
    ~0.5 GB of them through the object store into the driver. Everything the table, the
    JSON report, the MLflow run and the portfolio use is kept (tested).
    """
    return dataclasses.replace(b, inference=None)


def model_stats(close: np.ndarray, inf: Inference, labels: np.ndarray) -> dict[str, Any]:
    """Score the predictions against what happened.

    close (N,) closes; labels (N,) ``action_labels`` (UNKNOWN where the future is needed).

    * action_acc: share of windows with a known label whose most likely action is the label;
      confusion: 3x3 counts, rows = label, columns = predicted (HOLD, BUY, SELL).
    * direction_acc: share of windows with a next bar that moved whose predicted next close
      change has the sign of the actual one; a flat next close is left out
      (``pipelines.model.direction``, the rule training and evaluation use).
    * close_err_vol: mean |predicted - actual| next close change in units of the window's
      volatility (the model's own scale); close_err_pct: mean |predicted close / actual - 1| in %.
    """
    ends = inf.ends
    has_next = ends < len(close) - 1
    e = ends[has_next]
    actual = np.log(close[e + 1] / close[e])  # (K,) actual log change of the next close
    pred = inf.candle[has_next, 3].astype(np.float64)  # (K,) predicted, in volatility units
    sigma = inf.sigma[has_next]
    pred_close = close[e] * np.exp(pred * sigma)
    lab = labels[ends]
    known = lab != UNKNOWN
    y, p = lab[known], inf.probs[known].argmax(axis=1)
    confusion = np.bincount(y * 3 + p, minlength=9).reshape(3, 3)
    nan = float("nan")
    return {
        "windows": int(len(ends)),
        "labelled": int(known.sum()),
        "action_acc": float(np.trace(confusion) / confusion.sum()) if known.any() else nan,
        "confusion": confusion.tolist(),
        "confusion_labels": list(ACTIONS),
        "direction_acc": direction_accuracy(pred, actual) if len(e) else nan,
        "close_err_vol": float(np.mean(np.abs(pred - actual / sigma))) if len(e) else nan,
        "close_err_pct": float(100 * np.mean(np.abs(pred_close / close[e + 1] - 1)))
        if len(e)
        else nan,
    }


def backtest_model(
    candles: pd.DataFrame,
    weights: BacktestWeights,
    cfg: Config,
    *,
    timeframe: str,
    symbol: str = "?",
) -> ModelBacktest:
    """Backtest ``weights`` on ``candles`` (one symbol, at ``timeframe``) with ``cfg.backtest``."""
    t0 = time.perf_counter()
    bt = cfg.backtest
    window = weights.spec.window
    labels = action_labels(candles, cfg.labels.pivot_bars, cfg.labels.move_threshold)
    rounds: list[TrainRound] = []
    if bt.walk_forward == "none":
        predictor = Predictor(weights.spec, cfg.model.device)
        predictor.load(dict(weights.state), weights.step)
        inf = infer_streamed(
            predictor,
            candles,
            timeframe,
            weights.extra_timeframes,
            window,
            symbol,
            batch_size=bt.inference_batch,
        )
    else:
        w = all_windows(candles, timeframe, weights.extra_timeframes, window, symbol)
        known = label_known_at(candles, labels, bt.walk_forward, cfg.labels.pivot_bars)
        inf, rounds = walk_forward(
            candles,
            w,
            labels,
            known,
            weights,
            cfg.train,
            every=bt.retrain_every,
            epochs=bt.retrain_epochs,
            batch_size=bt.inference_batch,
            seed=cfg.run.seed,
            device=cfg.model.device,
        )
    acts = confidence_actions(inf.probs, bt.confidence)
    actions = bar_actions(len(candles), inf.ends, acts)
    result = simulate(candles, trade_signals(actions), backtest_spec(bt), symbol=symbol)
    stats = model_stats(candles["close"].to_numpy(dtype=np.float64), inf, labels)
    counts = np.bincount(acts, minlength=3)
    stats.update({f"signals_{a.lower()}": int(c) for a, c in zip(ACTIONS, counts, strict=True)})
    training = {
        "mode": bt.walk_forward,
        "rounds": len(rounds),
        "steps": sum(r.steps for r in rounds),
        "samples": int(sum(len(r.bars) for r in rounds)),
    }
    if bt.walk_forward != "none":
        training["retrain_every"] = bt.retrain_every
    return ModelBacktest(
        symbol, result, actions, inf, stats, training, tuple(rounds), time.perf_counter() - t0
    )
