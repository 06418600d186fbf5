"""ModelCore's training calls without Ray: failures part-way, sample selection, epoch means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import random_batch

from actors.model.core import ModelCore
from pipelines.data.dataset import Dataset
from pipelines.errors import CandlerayError, CheckpointError, InvalidInputError

# dropout off: two cores given the same data must reach the same weights
QUIET = ("checkpoint.every_steps=1000", "checkpoint.on_best=false", "model.dropout=0")


def same_weights(a: ModelCore, b: ModelCore) -> bool:
    sa, sb = a.trainer.model.state_dict(), b.trainer.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_failure_part_way_publishes_the_steps_applied_and_says_so(make_cfg):
    core = ModelCore(make_cfg(*QUIET))
    x, yc, ya = random_batch(core, b=24)
    x[16:] *= 1e20  # finite, so it passes the checks, but the third batch's loss overflows
    with pytest.raises(CandlerayError) as exc:
        core.train_samples(Dataset(x, yc, ya), batch_size=8)
    msg = str(exc.value)
    assert "2 step(s)" in msg and "indices[16:]" in msg and "no weights were updated" not in msg
    assert getattr(exc.value, "steps_applied", None) == 2
    # what was applied is what readers see: snapshot, summary and the error agree
    assert core.trainer.step == core.snapshot.version == core.summary["steps"] == 2
    assert core.summary["version"] == 2


def test_a_checkpoint_failure_after_the_step_publishes_it(make_cfg, monkeypatch):
    core = ModelCore(make_cfg("checkpoint.every_steps=1", "checkpoint.on_best=false"))

    def disk_full(*args, **kwargs):
        raise CheckpointError("could not write checkpoint: [Errno 28] No space left on device")

    monkeypatch.setattr(core.store, "save", disk_full)
    with pytest.raises(CandlerayError, match=r"1 step\(s\).*No space left.*do not retry"):
        core.train_batch(*random_batch(core))
    assert core.trainer.step == core.snapshot.version == 1


def test_bad_input_found_before_any_step_changes_nothing(make_cfg):
    core = ModelCore(make_cfg(*QUIET))
    x, yc, ya = random_batch(core, b=24)
    yc[20, 3] = np.nan  # in the last batch: still refused before the first
    with pytest.raises(InvalidInputError, match="NaN"):
        core.train_samples(Dataset(x, yc, ya), batch_size=8)
    assert core.trainer.step == core.snapshot.version == 0


def test_a_boolean_mask_trains_its_rows_not_rows_0_and_1(make_cfg):
    cfg = make_cfg(*QUIET)
    data = Dataset(*random_batch(ModelCore(cfg), b=5))
    masked, by_index = ModelCore(make_cfg(*QUIET)), ModelCore(make_cfg(*QUIET))
    mask = np.array([False, False, True, True, False])
    masked.train_samples(data, mask, batch_size=8)
    by_index.train_samples(data, [2, 3], batch_size=8)
    assert same_weights(masked, by_index)
    with pytest.raises(InvalidInputError, match="one entry per sample"):
        masked.train_samples(data, mask[:4])
    assert masked.trainer.step == 1


def test_epoch_means_are_per_sample(make_cfg):
    """65 samples in batches of 64: the 1-sample batch weighs 1/65, not 1/2."""
    a, b = ModelCore(make_cfg(*QUIET)), ModelCore(make_cfg(*QUIET))
    data = Dataset(*random_batch(a, b=65, seed=4))
    (epoch,) = a.train_epochs(data, 1, batch_size=64, seed=7)
    steps = b.train_samples(data, np.random.default_rng(7).permutation(65), 64)
    for k in ("total_loss", "action_loss", "action_accuracy"):
        want = np.average([m[k] for m in steps], weights=[64, 1])
        assert epoch[k] == pytest.approx(want, rel=1e-5), k
