"""ModelCore without Ray: checkpoint bookkeeping, config mismatch, uploads from remote storage."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from support import random_batch

from actors.model.core import ModelCore
from pipelines.errors import CheckpointError


def test_saving_the_same_weights_twice_keeps_the_best_flag(make_cfg):
    core = ModelCore(make_cfg("checkpoint.every_steps=1000"))
    core.train_batch(*random_batch(core))
    first = core.save_checkpoint("batch", is_best=True)
    again = core.save_checkpoint("batch")  # e.g. the end of `candleray train` right after a best
    assert again == first and core.store.best().step == 1
    assert len(core.store.list()) == 1


def test_rewinding_gives_a_new_weights_lineage(make_cfg):
    core = ModelCore(make_cfg("checkpoint.every_steps=1000"))
    core.train_batch(*random_batch(core))
    info = core.save_checkpoint()
    for i in range(3):
        core.train_batch(*random_batch(core, seed=i + 1))
    seen = (core.snapshot.generation, core.snapshot.version)
    core.load_checkpoint(info["path"])
    for i in range(3):
        core.train_batch(*random_batch(core, seed=i + 7))
    # step 4 again, other weights: a predictor that holds (gen, 4) must see a new version
    assert core.snapshot.version == 4 and (core.snapshot.generation, 4) != seen


def test_checkpoints_of_another_model_config_are_a_clear_error(make_cfg):
    cfg = make_cfg("checkpoint.every_steps=1000")
    core = ModelCore(cfg)
    core.train_batch(*random_batch(core))
    core.save_checkpoint()
    other = make_cfg("model.d_model=16", "model.dim_feedforward=128", name=cfg.run.name)
    with pytest.raises(CheckpointError, match=r"another run\.name"):
        ModelCore(other)


def test_checkpoints_on_remote_storage_reach_mlflow(make_cfg, tmp_path):
    """A checkpoint.uri that is not a local folder (memory:// here, s3:// on a cluster) is
    uploaded from a temporary copy; the best is registered from one too."""
    cfg = make_cfg(
        "checkpoint.uri=memory://candleray-test/ckpts",
        "tracking.enabled=true",
        "checkpoint.every_steps=2",
        "train.trend_window=2",
    )
    core = ModelCore(cfg)
    for i in range(4):
        core.train_batch(*random_batch(core, seed=i))
    status = core.flush_tracking()
    assert status["errors"] == 0, status
    mc = MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    arts = [a.path for a in mc.list_artifacts(core.run_id, "checkpoints")]
    assert any(p.endswith(".pt") for p in arts)
    assert mc.get_model_version_by_alias(cfg.run.name, "best").run_id == core.run_id
    core.close()
