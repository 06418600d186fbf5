"""Data-parallel training (train.workers > 1) trains the model one process does, on ranks that
stay identical, with checkpoints any number of ranks can load."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from actors.model.core import ModelCore
from pipelines.data.dataset import Dataset
from pipelines.errors import PlacementError
from pipelines.model.distributed import state_digest
from pipelines.model.trainer import METRICS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# ranks take half a logical CPU each, so three fit beside the session's other actors
RANKS = ("train.worker_num_cpus=0.5", "model.dropout=0")
KEY_BIAS = "encoder.layers.0.self_attn.in_proj_bias"


def dataset(core: ModelCore, n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    s = core.spec
    return Dataset(
        rng.standard_normal((n, s.window, s.n_features)).astype(np.float32),
        rng.standard_normal((n, 5)).astype(np.float32),
        rng.integers(0, 3, n),
    )


def comparable(state: dict[str, torch.Tensor], d_model: int) -> dict[str, torch.Tensor]:
    """Every weight but the attention's key bias. Its gradient is exactly zero in exact
    arithmetic (softmax ignores a shift shared by all keys), so what it gets is float rounding
    noise, which Adam scales up to lr-sized steps: any change of summation order (one process
    or two) moves it differently, without changing what the model computes."""
    out = dict(state)
    bias = out.pop(KEY_BIAS)
    out["q_bias"], out["v_bias"] = bias[:d_model], bias[2 * d_model :]
    return out


@pytest.mark.parametrize(
    ("weighting", "batch"),
    [
        (("train.hard_sample_weight=0", "train.wrong_direction_weight=0"), 16),
        ((), 15),  # per-sample weighting on (the defaults) and a batch two ranks split unevenly
    ],
    ids=["plain-even-batch", "weighted-odd-batch"],
)
def test_two_ranks_train_the_model_one_process_trains(ray_cluster, make_cfg, weighting, batch):
    one = ModelCore(make_cfg(*RANKS, *weighting))
    two = ModelCore(make_cfg(*RANKS, *weighting, "train.workers=2"))
    try:
        data = dataset(one, 50 * batch)
        m1 = one.train_samples(data, None, batch)
        m2 = two.train_samples(data, None, batch)
        assert one.snapshot.version == two.snapshot.version == 50
        d = one.spec.d_model
        w1, w2 = comparable(one.snapshot.state, d), comparable(two.snapshot.state, d)
        for k in w1:
            rel = float((w1[k] - w2[k]).norm() / w1[k].norm().clamp_min(1e-12))
            assert rel < 1e-5, (k, rel)
        for a, b in zip(m1, m2, strict=True):
            assert a["samples"] == b["samples"] and a["direction_samples"] == b["direction_samples"]
            for k in METRICS:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    finally:
        two.trainer.shutdown()


def test_ranks_stay_identical_after_every_kind_of_call(ray_cluster, make_cfg):
    core = ModelCore(make_cfg(*RANKS, "train.workers=2"))
    trainer = core.trainer
    data = dataset(core, 40)

    def identical() -> None:
        ranks = trainer.digests()
        # and the published snapshot is theirs: the actor's copy hashes the same
        assert ranks == [state_digest(trainer)] * 2

    try:
        core.train_batch(data.x[:16], data.y_candle[:16], data.y_action[:16])
        identical()
        core.train_samples(data, np.arange(5, 40), 7)
        identical()
        core.train_epochs(data, 2, batch_size=9, seed=3)
        identical()
        online = core.train_batch(data.x[:1], data.y_candle[:1], data.y_action[:1], kind="live")
        assert online["samples"] == 1.0 and online["version"] == core.snapshot.version
        identical()
        assert core.snapshot.version == 1 + 5 + 2 * 5 + 1
        assert all(bool(torch.isfinite(v).all()) for v in core.snapshot.state.values())
        # a closed core keeps no rank running nor any resources reserved for them
        ranks, pg = list(trainer.ranks), trainer._pg
        assert len(ranks) == 2 and pg is not None
        core.close()
        for rank in ranks:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(rank.pid.remote(), timeout=120)
        assert ray.util.placement_group_table(pg)["state"] == "REMOVED"
    finally:
        trainer.shutdown()


def test_checkpoints_load_with_any_number_of_ranks(ray_cluster, make_cfg):
    two = ModelCore(make_cfg(*RANKS, "train.workers=2", name="ckpt-n"))
    data = dataset(two, 48)
    try:
        two.train_samples(data, None, 16)
        two.save_checkpoint()
        saved = two.snapshot.state
    finally:
        two.trainer.shutdown()
    one = ModelCore(make_cfg(*RANKS, name="ckpt-n"))  # written with 2 ranks, read with 1
    assert one.restored_from == 3
    assert all(torch.equal(one.snapshot.state[k], v) for k, v in saved.items())
    one.train_samples(data, None, 16)
    one.save_checkpoint()
    three = ModelCore(make_cfg(*RANKS, "train.workers=3", name="ckpt-n"))  # 1 → 3
    try:
        assert three.restored_from == 6
        assert all(torch.equal(three.snapshot.state[k], v) for k, v in one.snapshot.state.items())
        assert state_digest(three.trainer) == state_digest(one.trainer)  # optimizer state too
        three.train_batch(data.x[:16], data.y_candle[:16], data.y_action[:16])
        assert three.trainer.digests() == [state_digest(three.trainer)] * 3
        assert three.snapshot.version == 7
    finally:
        three.trainer.shutdown()


def test_ranks_that_cannot_be_placed_are_an_error_naming_the_key(ray_cluster, make_cfg):
    core = ModelCore(
        make_cfg(*RANKS, "train.workers=2", "train.worker_resources={no_such_node: 1}")
    )
    x = dataset(core, 4)
    with pytest.raises(PlacementError, match=r"no_such_node=1 \(train\.worker_resources\)"):
        core.train_batch(x.x, x.y_candle, x.y_action)
    assert core.snapshot.version == 0 and core.trainer.step == 0
