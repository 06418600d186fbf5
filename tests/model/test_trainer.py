import numpy as np
import pytest
import torch

from conf.schema import TrainConfig
from pipelines.errors import InvalidInputError
from pipelines.model.network import ModelSpec
from pipelines.model.trainer import METRICS, Trainer

CPU = torch.device("cpu")
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


def test_flat_next_close_is_neither_right_nor_wrong():
    """A flat next close (target exactly 0) is left out of candle_accuracy and gets no
    wrong-direction weight: it used to count as a wrong direction."""
    x, yc, ya = batch(64)
    heavy = Trainer(SPEC, TrainConfig(hard_sample_weight=0.0, wrong_direction_weight=5.0), CPU)
    plain = Trainer(SPEC, TrainConfig(hard_sample_weight=0.0, wrong_direction_weight=0.0), CPU)
    heavy.model.eval()
    with torch.no_grad():
        pred, _ = heavy.model(torch.as_tensor(x))
    yc[:, 3] = np.sign(pred[:, 3].numpy()) * np.abs(yc[:, 3])  # every direction right ...
    yc[::2, 3] = 0.0  # ... and every other next close flat
    m = heavy.evaluate(x, yc, ya)
    assert m["candle_accuracy"] == 1.0  # 32 right of 32 with a direction
    # no sample is wrong, so the wrong-direction weight changes nothing
    assert m["total_loss"] == pytest.approx(plain.evaluate(x, yc, ya)["total_loss"], rel=1e-6)
    yc[:, 3] = 0.0
    assert np.isnan(heavy.evaluate(x, yc, ya)["candle_accuracy"])  # nothing to score
    step = heavy.train_step(x, yc, ya)
    assert np.isnan(step["candle_accuracy"]) and np.isfinite(step["total_loss"])


def test_evaluate_does_not_depend_on_the_batch_size():
    t = Trainer(SPEC, TrainConfig(), CPU)
    x, yc, ya = batch(100, seed=3)
    whole = t.evaluate(x, yc, ya, batch_size=100)
    for bs in (1, 7, 64):
        m = t.evaluate(x, yc, ya, batch_size=bs)
        for k in METRICS:
            assert m[k] == pytest.approx(whole[k], rel=1e-5), (bs, k)


def test_means_over_steps_weigh_samples_not_batches():
    from pipelines.model.trainer import mean_metrics

    full = {"total_loss": 1.0, "action_accuracy": 0.5, "candle_accuracy": 0.25, "lr": 1e-3}
    full |= {"samples": 64.0, "direction_samples": 60.0}
    short = {"total_loss": 3.0, "action_accuracy": 0.0, "candle_accuracy": float("nan")}
    short |= {"lr": 1e-3, "samples": 1.0, "direction_samples": 0.0}  # a flat last sample
    m = mean_metrics([full, short])
    assert m["total_loss"] == pytest.approx((64 * 1.0 + 3.0) / 65)
    assert m["action_accuracy"] == pytest.approx(32 / 65)
    assert m["candle_accuracy"] == 0.25  # the flat sample is not scored
    assert m["samples"] == 65 and m["direction_samples"] == 60 and m["lr"] == 1e-3


def test_a_boolean_mask_selects_its_rows():
    from pipelines.model.trainer import sample_indices

    mask = np.array([False, False, True, True, False])
    assert sample_indices(mask, 5).tolist() == [2, 3]
    assert sample_indices([1, 4], 5).tolist() == [1, 4]
    for bad, needle in (
        (mask[:4], "one entry per sample"),
        (np.zeros(5, bool), "no samples"),
        ([0.5, 1.0], "integer positions"),
        ([5], r"\[0, 4\]"),
    ):
        with pytest.raises(InvalidInputError, match=needle):
            sample_indices(bad, 5)
