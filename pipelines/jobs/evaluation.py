"""Held-out evaluation of a predictor against honest baselines, per symbol.

Baselines:
* persistence — the next candle repeats the last move: direction = sign of the last return,
  next close change = last close change;
* no-change — the next close equals this close (the random-walk forecast), for close error;
* always-HOLD and majority-class (the most frequent training label) for the action.

Direction accuracies follow ``pipelines.model.direction``: a flat next close is left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.data.dataset import Dataset, Split
from pipelines.model.direction import direction_accuracy
from serve.predictor import Predictor


def evaluate_split(predictor: Predictor, split: Split) -> pd.DataFrame:
    """One row per symbol (and ALL) on the held-out windows."""
    majority = int(np.bincount(split.train.y_action, minlength=3).argmax())
    rows = []
    h = split.holdout
    groups = [(sym, h.symbol == i) for i, sym in enumerate(h.symbols)] + [
        ("ALL", np.ones(len(h), bool))
    ]
    for sym, sel in groups:
        if not sel.any():
            continue
        rows.append({"symbol": sym, **_metrics(predictor, h.subset(np.flatnonzero(sel)), majority)})
    return pd.DataFrame(rows).set_index("symbol")


def _metrics(predictor: Predictor, d: Dataset, majority: int) -> dict[str, float]:
    p = predictor.predict(d.x)
    true_close = d.y_candle[:, 3]  # next close change in window-volatility units
    last_change = -d.x[:, -2, 3]  # this bar's close change (features are relative to this close)
    return {
        "n": len(d),
        "dir_acc": direction_accuracy(p.candle[:, 3], true_close),
        "dir_acc_persistence": direction_accuracy(last_change, true_close),
        "action_acc": float(np.mean(p.probs.argmax(1) == d.y_action)),
        "action_acc_hold": float(np.mean(d.y_action == 0)),
        "action_acc_majority": float(np.mean(d.y_action == majority)),
        "close_mae": float(np.mean(np.abs(p.candle[:, 3] - true_close))),
        "close_mae_persistence": float(np.mean(np.abs(last_change - true_close))),
        "close_mae_nochange": float(np.mean(np.abs(true_close))),
    }
