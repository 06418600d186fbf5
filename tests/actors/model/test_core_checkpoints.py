"""ModelCore's checkpoints across restarts, rewinds and crashes: what the next start restores."""

from __future__ import annotations

import os

import pytest
import torch
from support import random_batch

from actors.model.core import ModelCore


def train(core, n, seed=0):
    for i in range(n):
        core.train_batch(*random_batch(core, seed=seed + i))


def test_a_save_after_a_restart_keeps_the_best(make_cfg):
    """`candleray train train.epochs=0` after a restart saves at the restored step: the best
    checkpoint keeps its flag, and later saves do not prune it."""
    cfg = make_cfg("checkpoint.every_steps=1000", "train.trend_window=10")
    core = ModelCore(cfg)
    train(core, 10)  # step 10: the first rolling best
    best = core.best_checkpoint()
    assert best is not None and best.step == 10
    again = ModelCore(cfg)  # restart: restores step 10
    assert again.restored_from == 10
    again.save_checkpoint("batch")
    assert again.best_checkpoint().path == best.path
    for i in range(3):
        again.train_batch(*random_batch(again, seed=20 + i))
        again.save_checkpoint("batch")
    assert again.best_checkpoint().path == best.path and os.path.exists(best.path)
    st, _ = again.store.load(best.path)
    assert st["step"] == 10


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing cleans up after it."""


def test_a_crash_mid_save_after_a_rewind_leaves_only_true_checkpoints(make_cfg, monkeypatch):
    cfg = make_cfg("checkpoint.every_steps=2", "checkpoint.keep_last=5", "train.trend_window=4")
    core = ModelCore(cfg)
    train(core, 4)  # checkpoints at steps 2 and 4
    core.load_checkpoint(core.list_checkpoints()[0]["path"])  # rewind to step 2
    core.train_batch(*random_batch(core, seed=50))  # step 3
    real_mv = core.store.fs.mv

    def mv(src, dst, *a, **k):
        if dst.endswith(".json"):
            raise Killed(dst)  # dies after the step-4 weights are in place, before their sidecar
        return real_mv(src, dst, *a, **k)

    monkeypatch.setattr(core.store.fs, "mv", mv)
    with pytest.raises(Killed):
        core.train_batch(*random_batch(core, seed=51))  # step 4 -> periodic save
    monkeypatch.undo()
    again = ModelCore(cfg)
    assert again.restored_from == 2  # the rewound weights, not the half-written step 4
    for info in again.store.list():  # every listed checkpoint loads the bytes it describes
        st, meta = again.store.load(info.path)
        assert st["step"] == meta["step"] == info.step


def test_a_rewind_survives_a_restart(make_cfg):
    cfg = make_cfg("checkpoint.every_steps=2", "checkpoint.on_best=false")
    core = ModelCore(cfg)
    train(core, 6)
    first = core.list_checkpoints()[0]
    assert [c["step"] for c in core.list_checkpoints()] == [2, 4, 6]
    out = core.load_checkpoint(first["path"])  # step 6 diverged: back to step 2
    assert out["step"] == 2
    w2 = core.trainer.weights_cpu()
    core.train_batch(*random_batch(core, seed=99))  # step 3, not saved; then the actor crashes
    again = ModelCore(cfg)
    assert again.restored_from == 2
    assert all(torch.equal(v, w2[k]) for k, v in again.trainer.weights_cpu().items())
    train(again, 4, seed=200)  # steps 3..6 of the new lineage: the abandoned 4 and 6 go first
    assert [c["step"] for c in again.list_checkpoints()] == [2, 4, 6]
    assert again.list_checkpoints()[0]["path"] != first["path"]


def test_loading_the_newest_checkpoint_writes_nothing(make_cfg):
    cfg = make_cfg("checkpoint.every_steps=2", "checkpoint.on_best=false")
    core = ModelCore(cfg)
    train(core, 4)
    before = core.list_checkpoints()
    core.load_checkpoint()
    core.load_checkpoint(before[-1]["path"])
    assert core.list_checkpoints() == before
    assert core.save_checkpoint() == before[-1]  # the same weights: nothing new to save


@pytest.mark.parametrize("content", [b"{}", b"[]", b'{"step": null}'])
def test_a_sidecar_that_is_not_a_record_does_not_stop_a_restart(make_cfg, content):
    cfg = make_cfg("checkpoint.every_steps=2", "checkpoint.on_best=false")
    core = ModelCore(cfg)
    train(core, 2)
    with open(core.store._p("ckpt-99999999-step000000004-00000000.json"), "wb") as f:
        f.write(content)
    again = ModelCore(cfg)
    assert again.restored_from == 2
    train(again, 2, seed=10)  # step 4 saves and prunes
    assert [c["step"] for c in again.list_checkpoints()] == [2, 4]
