import dataclasses

import pytest

from conf import config_from_dict, to_dict
from pipelines.config import load_config
from pipelines.errors import ConfigError


def test_defaults_load_frozen_and_resolved(tmp_path):
    cfg = load_config(overrides=[f"run.home={tmp_path}"])
    assert cfg.model.d_model == 64 and cfg.model.device == "auto"
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.checkpoint.uri == str(tmp_path / "checkpoints")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.d_model = 3  # type: ignore[misc]


def test_every_profile_loads():
    for profile in ("demo", "cluster"):
        cfg = load_config(profile, resolve_paths=False)
        assert cfg.data.symbols


def test_overrides_apply_with_yaml_values():
    cfg = load_config(
        overrides=[
            "model.d_model=128",
            "data.symbols=[EUR/USD]",
            "train.lr=0.01",
            "ray.address=auto",
        ]
    )
    assert cfg.model.d_model == 128
    assert cfg.data.symbols == ("EUR/USD",)
    assert cfg.train.lr == 0.01
    assert cfg.ray.address == "auto"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.dmodel=3", "model.dmodel"),
        ("bogus.key=1", "bogus"),
        ("model.d_model=abc", "model.d_model: expected an integer"),
        ("model.d_model=1.5", "model.d_model: expected an integer"),
        ("tracking.enabled=yes please", "tracking.enabled: expected true or false"),
        ("data.symbols=EURUSD", "data.symbols: expected a list"),
        ("model.d_model=30", "multiple of model.n_heads"),
        ("model.device=tpu", "model.device"),
        ("data.extra_timeframes=[30m]", "coarser than data.timeframe"),
        ("data.timeframe=1x", "timeframe '1x' is not understood"),
        ("train.holdout_fraction=1.5", "train.holdout_fraction"),
        ("train.trend_window=0", "train.trend_window=0 must be >= 1"),
        (
            "checkpoint.best_metric=val_loss",
            "checkpoint.best_metric='val_loss' is not a metric the trainer reports; use one of "
            "total_loss, candle_loss, action_loss, candle_accuracy, action_accuracy",
        ),
        ("nokey", "section.key=value"),
    ],
)
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    assert needle in str(exc.value)


def test_unknown_profile_lists_the_choices():
    with pytest.raises(ConfigError, match="cluster"):
        load_config("nope")


def test_round_trip_through_plain_dict():
    cfg = load_config("demo", resolve_paths=False)
    assert config_from_dict(to_dict(cfg)) == cfg


def test_yaml_dates_become_iso_strings():
    cfg = load_config(overrides=["data.since=2024-01-01", "backtest.until=2024-03-01"])
    assert cfg.data.since == "2024-01-01" and cfg.backtest.until == "2024-03-01"


def test_bad_backtest_values_name_the_key():
    with pytest.raises(ConfigError, match="backtest.walk_forward"):
        load_config(overrides=["backtest.walk_forward=sometimes"])
    with pytest.raises(ConfigError, match="data.since"):
        load_config(overrides=["data.since=soon"])


def test_best_metric_choices_are_the_metrics_the_trainer_reports():
    """conf keeps its own list (it must not import the model); this keeps the two equal."""
    from conf.schema import BEST_METRICS
    from pipelines.model.trainer import METRICS

    assert BEST_METRICS == METRICS


def test_a_secret_never_leaves_the_config_object():
    """serve.token reaches the app but never a checkpoint, an MLflow param or a report."""
    cfg = load_config(None, ["serve.token=s3cret-value"], resolve_paths=False)
    assert cfg.serve.token == "s3cret-value"
    out = to_dict(cfg)
    assert out["serve"]["token"] is None
    assert "s3cret-value" not in repr(out)
    assert config_from_dict(out).serve.token is None


def test_the_database_password_never_leaves_the_config_object():
    """run.database_url is written out (where the journals live), its password never."""
    url = "postgresql+psycopg://cr:pw-s3cret@db.internal:5432/candleray"
    cfg = load_config(None, [f"run.database_url={url}"], resolve_paths=False)
    assert cfg.run.database_url == url
    out = to_dict(cfg)
    assert out["run"]["database_url"] == "postgresql+psycopg://cr:***@db.internal:5432/candleray"
    assert "pw-s3cret" not in repr(out)
    no_password = "postgresql+psycopg://cr@db.internal/candleray"  # PGPASSWORD on each node
    cfg = load_config(None, [f"run.database_url={no_password}"], resolve_paths=False)
    assert to_dict(cfg)["run"]["database_url"] == no_password
