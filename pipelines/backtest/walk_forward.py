"""Walk-forward: predict and train as the backtest moves forward, on a private copy of the model.

Timeline. The window ending at bar b is predicted at bar b's close. Windows are predicted in
chunks of ``R = backtest.retrain_every`` bars; before predicting the chunk that starts at bar
b, the copy trains on every sample whose label became known at or before bar b's close and
that it has not trained on yet. So the weights that predict bar j were trained only on labels
known by some bar b <= j: nothing is learned from a label before it could be known.

When the label of bar t is known (its sample is the window ending at t, the next candle t+1
and the action label of ``pipelines.data.labels.action_labels``):

* ``every_candle``: at bar t + max(1, pivot_bars). The next candle and the price move need
  bar t+1; whether bar t is a pivot (which overrides the move label) needs ``pivot_bars``
  bars after it, so the label is not final before then.
* ``pivots_only``: only confirmed pivots (BUY at swing lows, SELL at swing highs), at bar
  t + pivot_bars, when the pivot is confirmed.

The copy is its own ``Trainer`` (fresh optimizer, seeded) loaded from the backtest's weights;
it lives inside the call (a Ray task for the runner) and is dropped at the end. The
ModelActor, its weights and its version are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from conf.schema import TrainConfig
from pipelines.backtest.inference import Inference, Windows, concat, infer
from pipelines.backtest.weights import BacktestWeights
from pipelines.data.features import candle_targets
from pipelines.data.labels import UNKNOWN, pivot_actions
from pipelines.errors import BacktestError
from pipelines.model.network import resolve_device
from pipelines.model.trainer import Trainer
from serve.predictor import Predictor

NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TrainRound:
    """One training round: after bar ``at_bar`` closed, before predicting windows ending at >= ``at_bar``."""

    at_bar: int
    bars: np.ndarray  # (K,) window ends (bars) whose samples were trained, in time order
    steps: int
    loss: float  # mean total loss over the round's steps


def label_known_at(
    candles: pd.DataFrame, labels: np.ndarray, mode: str, pivot_bars: int
) -> np.ndarray:
    """(N,) bar at whose close the training label of each bar is known; ``NEVER`` if not trained on."""
    n = len(labels)
    t = np.arange(n, dtype=np.int64)
    known = np.full(n, NEVER, dtype=np.int64)
    if mode == "every_candle":
        ok = labels != UNKNOWN
        known[ok] = t[ok] + max(1, pivot_bars)
    elif mode == "pivots_only":
        piv = (
            pivot_actions(candles["high"].to_numpy(), candles["low"].to_numpy(), pivot_bars)
            != UNKNOWN
        )
        known[piv] = t[piv] + pivot_bars
    else:
        raise BacktestError(
            f"walk-forward mode {mode!r} does not train; use pivots_only or every_candle"
        )
    return known


def walk_forward(
    candles: pd.DataFrame,
    w: Windows,
    labels: np.ndarray,
    known_at: np.ndarray,
    weights: BacktestWeights,
    train_cfg: TrainConfig,
    *,
    every: int,
    epochs: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Inference, list[TrainRound]]:
    """Predict every window of ``w`` chunk by chunk, training a private copy between chunks.

    ``labels`` (N,) are the action labels and ``known_at`` (N,) when each becomes known
    (``label_known_at``). Returns the predictions (same order as ``w``) and the training rounds.
    """
    n_bars = len(candles)
    trainer = Trainer(weights.spec, train_cfg, resolve_device(device), seed=seed)
    trainer.model.load_state_dict(weights.state)
    predictor = Predictor(weights.spec, device)
    rng = np.random.default_rng(seed)

    # candidates: windows with a next bar and a label that will become known, ordered by that time
    cand = np.flatnonzero((w.ends < n_bars - 1) & (known_at[w.ends] != NEVER))
    cand = cand[np.argsort(known_at[w.ends[cand]], kind="stable")]
    cand_known = known_at[w.ends[cand]]
    y_candle = candle_targets(candles, weights.spec.window, w.ends[cand], w.sigma[cand])  # (C, 5)
    y_action = labels[w.ends[cand]]

    parts: list[Inference] = []
    rounds: list[TrainRound] = []
    done = 0  # candidates [0, done) are trained
    for start in range(0, len(w), every):
        at_bar = int(w.ends[start])
        upto = int(np.searchsorted(cand_known, at_bar, side="right"))  # known by at_bar's close
        if upto > done:
            rounds.append(
                _train_round(trainer, w, cand, y_candle, y_action, done, upto, at_bar, epochs, rng)
            )
            done = upto
        predictor.load(trainer.model.state_dict(), trainer.step)
        parts.append(infer(predictor, w, start, start + every, batch_size=batch_size))
    return concat(parts), rounds


def _train_round(
    trainer: Trainer,
    w: Windows,
    cand: np.ndarray,
    y_candle: np.ndarray,
    y_action: np.ndarray,
    lo: int,
    hi: int,
    at_bar: int,
    epochs: int,
    rng: np.random.Generator,
) -> TrainRound:
    bs = trainer.cfg.batch_size
    losses = []
    for epoch in range(epochs):
        # the first pass in time order; later passes shuffled (seeded)
        order = np.arange(lo, hi) if epoch == 0 else lo + rng.permutation(hi - lo)
        for s in range(0, len(order), bs):
            b = order[s : s + bs]
            m = trainer.train_step(w.x[cand[b]], y_candle[b], y_action[b])
            losses.append(m["total_loss"])
    bars = np.sort(w.ends[cand[lo:hi]])
    return TrainRound(at_bar, bars, len(losses), float(np.mean(losses)))
