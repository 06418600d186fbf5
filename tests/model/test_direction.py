"""One direction rule everywhere: a flat next close is neither right nor wrong.

Training metrics (tests/model/test_trainer.py), held-out evaluation and backtest model
statistics must score the same predictions the same way.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.backtest.inference import Inference
from pipelines.backtest.model_driven import model_stats
from pipelines.data.dataset import Dataset, Split
from pipelines.data.labels import UNKNOWN
from pipelines.jobs.evaluation import evaluate_split


def test_backtest_direction_accuracy_leaves_out_a_flat_next_close():
    close = np.array([100.0, 101.0, 101.0, 100.0, 100.5])  # bar 1 -> 2 is flat
    ends = np.array([0, 1, 2, 3])
    pred = np.zeros((4, 5), dtype=np.float32)
    pred[:, 3] = [1.0, -1.0, -1.0, 1.0]  # right, (flat), right, right
    probs = np.full((4, 3), 1 / 3)
    sigma = np.full(4, 0.01)
    s = model_stats(close, Inference(ends, pred, probs, sigma), np.full(5, UNKNOWN))
    assert s["direction_acc"] == 1.0  # was 3/4: the flat bar counted as wrong


def test_held_out_evaluation_leaves_out_a_flat_next_close():
    n, window = 4, 6
    x = np.zeros((n, window, 5), dtype=np.float32)
    x[:, -2, 3] = [-1.0, -1.0, 1.0, 1.0]  # this bar's close change is +1, +1, -1, -1
    y_candle = np.zeros((n, 5), dtype=np.float32)
    y_candle[:, 3] = [0.5, 0.0, -0.5, 0.0]  # two flat next closes
    data = Dataset(x, y_candle, np.zeros(n, dtype=np.int64), symbols=("S",))
    pred = np.zeros((n, 5), dtype=np.float32)
    pred[:, 3] = [1.0, 1.0, -1.0, -1.0]
    predictor = SimpleNamespace(
        predict=lambda xs: SimpleNamespace(candle=pred, probs=np.tile([1.0, 0, 0], (n, 1)))
    )
    row = evaluate_split(predictor, Split(data, data, {})).loc["ALL"]
    assert row["dir_acc"] == 1.0 and row["dir_acc_persistence"] == 1.0  # were 0.5


@pytest.mark.parametrize(
    ("pred", "actual", "acc"),
    [
        ([1.0, -2.0, 3.0], [0.1, -0.1, 0.0], 1.0),  # the flat one is left out
        ([0.0, 1.0], [0.2, -0.2], 0.0),  # predicting no move before a move is wrong
        ([1.0], [0.0], float("nan")),  # nothing to score
    ],
)
def test_direction_accuracy_rule(pred, actual, acc):
    from pipelines.model.direction import direction_accuracy

    got = direction_accuracy(np.array(pred), np.array(actual))
    assert got == acc or (np.isnan(acc) and np.isnan(got))
