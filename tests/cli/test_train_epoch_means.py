"""``candleray train``'s per-epoch line shows the epoch's means, not the last call's figures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipelines.cli.train import _progress_bar
from pipelines.data.dataset import Dataset, Split
from pipelines.jobs.training import train_split

pytestmark = pytest.mark.ray

# per batch, in the order the calls return: the loss a noisy last batch would show is 1.70
LOSSES = [0.99, 0.80, 1.20, 0.60, 1.70]


class LossClient:
    """A ModelActor stand-in: batch i of each epoch reports LOSSES[i], 10 samples each."""

    def __init__(self) -> None:
        self.batch = 0

    def call(self, method, *args):
        return None

    def submit(self, method, data_ref, chunk, bs, kind):
        return -(-len(chunk) // bs)

    def wait(self, n_batches, method):
        out = []
        for _ in range(n_batches):
            loss = LOSSES[self.batch % len(LOSSES)]
            self.batch += 1
            out.append(
                {
                    "total_loss": loss,
                    "candle_accuracy": 0.5,
                    "action_accuracy": 0.25,
                    "samples": 10.0,
                    "direction_samples": 10.0,
                }
            )
        return out


def test_the_epoch_line_prints_the_epoch_mean(ray_cluster, make_cfg, capsys):
    cfg = make_cfg("train.batch_size=10", "train.batches_per_call=2")
    n = 10 * len(LOSSES)
    d = Dataset(np.zeros((n, 4, 5), np.float32), np.zeros((n, 5), np.float32), np.zeros(n, int))
    bar, update = _progress_bar(len(LOSSES), 2)  # stderr is no terminal: one line per epoch
    try:
        epochs = train_split(LossClient(), Split(d, d, {}), cfg, epochs=2, progress=update)
    finally:
        bar.close()
    printed = re.findall(r"epoch (\d)/2 means: loss ([\d.]+)", capsys.readouterr().err)
    mean = sum(LOSSES) / len(LOSSES)  # 1.058; the last call alone would say 1.70
    assert printed == [("1", f"{mean:.3f}"), ("2", f"{mean:.3f}")]
    assert [e.metrics["total_loss"] for e in epochs] == pytest.approx([mean, mean])
