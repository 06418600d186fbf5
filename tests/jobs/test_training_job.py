"""``train_split`` against a scripted client: per-sample epoch means, failures part-way."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.dataset import Dataset, Split
from pipelines.errors import InvalidInputError, PartialTrainingError
from pipelines.jobs.training import train_split

pytestmark = pytest.mark.ray


class ScriptedClient:
    """Answers each train_samples call with one metrics dict per batch; call ``fail`` raises."""

    def __init__(self, fail: int | None = None, error: Exception | None = None) -> None:
        self.fail, self.error, self.submitted = fail, error, 0

    def call(self, method, *args):
        return None

    def submit(self, method, data_ref, chunk, bs, kind):
        self.submitted += 1
        return self.submitted, len(chunk), bs

    def wait(self, ref, method):
        n, size, bs = ref
        if n == self.fail:
            raise self.error
        sizes = [min(bs, size - s) for s in range(0, size, bs)]
        # the loss of a batch is its size, so a per-batch mean and a per-sample one differ
        return [{"total_loss": float(b), "samples": float(b)} for b in sizes]


def split(n: int) -> Split:
    d = Dataset(np.zeros((n, 4, 5), np.float32), np.zeros((n, 5), np.float32), np.zeros(n, int))
    return Split(d, d, {})


def test_epoch_metrics_are_per_sample_means(ray_cluster, make_cfg):
    cfg = make_cfg("train.batch_size=10", "train.batches_per_call=2")
    (epoch,) = train_split(ScriptedClient(), split(105), cfg, epochs=1)
    assert epoch.steps == 11  # ten batches of 10, one of 5
    assert epoch.metrics["total_loss"] == pytest.approx((100 * 10 + 5 * 5) / 105)


def test_a_failed_call_reports_every_step_applied(ray_cluster, make_cfg):
    cfg = make_cfg("train.batch_size=10", "train.batches_per_call=2")
    bad = PartialTrainingError("overflow", steps_applied=1)
    with pytest.raises(PartialTrainingError, match=r"5 step\(s\)") as exc:
        train_split(ScriptedClient(fail=2, error=bad), split(100), cfg, epochs=1)
    # call 1: 2 steps; call 2 failed after 1; call 3 was in flight and finished its 2
    assert exc.value.steps_applied == 5
    refused = InvalidInputError("bad batch")  # the first call: nothing was applied
    with pytest.raises(InvalidInputError):
        train_split(ScriptedClient(fail=1, error=refused), split(20), cfg, epochs=1)
