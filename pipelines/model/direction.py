"""The direction rule of the next close, shared by the loss, training metrics, held-out
evaluation and backtest model statistics (one rule, so their accuracies agree).

* A flat next close (an actual change of exactly 0, e.g. an unchanged quote) has no direction
  to get right or wrong: it is left out of direction accuracy and gets no wrong-direction
  weight in the loss.
* Otherwise the direction is right when the predicted change has the actual change's sign;
  a predicted change of exactly 0 before a real move is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def direction_hits(pred: Any, actual: Any) -> tuple[Any, Any]:
    """``(right, counted)`` boolean masks of shape (N,) for predicted and actual changes (N,).

    Works on NumPy arrays and torch tensors alike (comparisons only), so the loss uses it on
    the device without a copy. ``right`` is False wherever ``counted`` is.
    """
    counted = actual != 0
    right = ((pred > 0) & (actual > 0)) | ((pred < 0) & (actual < 0))
    return right, counted


def direction_accuracy(pred: Any, actual: Any) -> float:
    """Share of non-flat actual changes whose direction ``pred`` got right; NaN if all are flat."""
    right, counted = direction_hits(np.asarray(pred), np.asarray(actual))
    n = int(np.count_nonzero(counted))
    return float(np.count_nonzero(right) / n) if n else float("nan")
