import numpy as np
import pytest
import torch

from conf.schema import TrainConfig
from pipelines.errors import InvalidInputError
from pipelines.model.network import ModelSpec
from pipelines.model.trainer import METRICS, Trainer

SPEC = ModelSpec(
    n_features=5, window=8, d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, dropout=0.0
)


def batch(b=16, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((b, 8, 5)).astype(np.float32),
        rng.standard_normal((b, 5)).astype(np.float32),
        rng.integers(0, 3, b),
    )


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def test_train_step_reports_every_metric_and_learns():
    t = Trainer(SPEC, TrainConfig(lr=3e-3), torch.device("cpu"))
    x, yc, ya = batch()
    first = t.train_step(x, yc, ya)
    assert set(METRICS) <= set(first) and t.step == 1
    for _ in range(150):
        last = t.train_step(x, yc, ya)
    assert last["total_loss"] < 0.5 * first["total_loss"]  # one batch is memorised
    assert last["action_accuracy"] == 1.0
    s = t.summary()
    assert s["steps"] == 151 and s["trend"] in ("improving", "flat") and s["last_train_time"]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda x, yc, ya: (x[:, :4], yc, ya), "shape"),
        (lambda x, yc, ya: (np.where(np.arange(8)[None, :, None] == 3, np.nan, x), yc, ya), "NaN"),
        (lambda x, yc, ya: (x, np.full_like(yc, np.inf), ya), "NaN or infinite"),
        (lambda x, yc, ya: (x, yc[:, :3], ya), "expected (16, 5)"),
        (lambda x, yc, ya: (x, yc, ya + 5), "HOLD"),
        (lambda x, yc, ya: (x[:0], yc[:0], ya[:0]), "B >= 1"),
    ],
)
def test_bad_batches_never_touch_the_weights(mutate, needle):
    t = Trainer(SPEC, TrainConfig(), torch.device("cpu"))
    t.train_step(*batch())
    before, opt_before = weights(t), t.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(InvalidInputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        t.train_step(*mutate(*batch()))
    assert t.step == 1
    for k, v in weights(t).items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(t.optimizer.state_dict()["state"][0]["exp_avg"], opt_before)


def test_wrong_direction_costs_more():
    cfg = TrainConfig(hard_sample_weight=0.0, wrong_direction_weight=5.0)
    t = Trainer(SPEC, cfg, torch.device("cpu"))
    x, yc, ya = batch(64)
    t.model.eval()
    with torch.no_grad():
        pred, _ = t.model(torch.as_tensor(x))
    right = yc.copy()
    right[:, 3] = np.sign(pred[:, 3].numpy()) * np.abs(yc[:, 3])
    wrong = right.copy()
    wrong[:, 3] = -right[:, 3]
    with torch.no_grad():
        lr = t._losses(*t._tensors(x, right, ya))
        lw = t._losses(*t._tensors(x, wrong, ya))
    assert float(lr["candle_accuracy"]) == 1.0 and float(lw["candle_accuracy"]) == 0.0
    # same per-sample base losses up to the sign flip, but wrong directions are up-weighted
    assert float(lw["total_loss"]) > float(lr["total_loss"])


def test_state_round_trip_and_spec_mismatch():
    t = Trainer(SPEC, TrainConfig(), torch.device("cpu"))
    for i in range(3):
        t.train_step(*batch(seed=i))
    state = t.state()
    u = Trainer(SPEC, TrainConfig(), torch.device("cpu"), seed=99)
    u.load_state(state)
    assert u.step == 3 and len(u.history) == 3
    for k, v in u.model.state_dict().items():
        assert torch.equal(v, state["model"][k])
    other = ModelSpec(n_features=5, window=8, d_model=32, n_heads=2, n_layers=1, dim_feedforward=32)
    with pytest.raises(InvalidInputError, match="matching config"):
        Trainer(other, TrainConfig(), torch.device("cpu")).load_state(state)
