"""A space file that cannot run is refused before any trial starts, naming the key and the fix,
with nothing written: no MLflow store, no sweep folder, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import cli
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.sweep.space import load_space, parse_space, trial_name

BAD = [
    ("train.lrr: {loguniform: [1.0e-4, 1.0e-2]}", ["train.lrr", "train has", "lr"]),
    ("model: {choice: [1, 2]}", ["'model'", "section"]),
    ("train.lr: {randint: [1, 5]}", ["train.lr", "randint needs an int", "uniform"]),
    ("model.device: {loguniform: [1.0e-4, 1.0e-2]}", ["model.device", "str", "choice"]),
    ("model.d_model: {choice: [32, big]}", ["model.d_model", "'big'", "integer"]),
    ("model.d_model: {uniform: [16.0, 64.0]}", ["model.d_model", "int setting", "randint"]),
    ("train.lr: {loguniform: [1.0e-2, 1.0e-4]}", ["train.lr", "empty or inverted", "low < high"]),
    ("train.batch_size: {randint: [32, 32]}", ["train.batch_size", "empty"]),
    ("train.lr: {loguniform: [0.0, 1.0e-2]}", ["train.lr", "low > 0"]),
    ("train.lr: {choice: []}", ["train.lr", "non-empty list"]),
    ("model.d_model: {grid: [32, 30]}", ["model.d_model", "30", "multiple of model.n_heads"]),
    ("train.lr: {uniform: [-1.0, 1.0e-2]}", ["train.lr", "-1.0", "must be > 0"]),
    ("train.lr: {normal: [0, 1]}", ["train.lr", "unknown distribution", "loguniform"]),
    ("train.lr: 0.001", ["train.lr", "exactly one distribution"]),
    ("ray.num_cpus: {choice: [1, 2]}", ["ray.num_cpus", "override"]),
    ("features.window: {randint: [8, 32]}", ["features.window", "dataset", "grid"]),
    ("[1, 2]", ["must map config keys"]),
    ("train.epochs: {choice: [2, 4]}", ["train.epochs", "base config", "train.epochs=8"]),
    (
        "model.d_model: {choice: [12, 64]}\nmodel.n_heads: {choice: [4, 8]}",
        ["model.d_model=12, model.n_heads=8", "multiple of model.n_heads"],
    ),
    (
        "train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmodel.d_model: {grid: [12, 64]}\n"
        "model.n_heads: {randint: [4, 9]}",
        ["model.d_model=12", "model.n_heads=8"],
    ),
]


@pytest.mark.parametrize(("text", "words"), BAD, ids=[b[0].split(":")[0] for b in BAD])
def test_bad_space_is_refused_naming_the_key_and_fix(text, words):
    import yaml

    with pytest.raises(ConfigError) as err:
        parse_space(yaml.safe_load(text), "space.yaml", load_config(None, []))
    for w in words:
        assert w in str(err.value)


def test_a_good_space_parses_with_its_datasets_and_names(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmodel.d_model: {choice: [32, 64]}\n"
        "labels.pivot_bars: {grid: [2, 3, 5]}\ntrain.batch_size: {randint: [32, 257]}\n"
    )
    space = load_space(p, load_config(None, []))
    assert [d.kind for d in space.dims] == ["loguniform", "choice", "grid", "randint"]
    assert space.dataset_combos() == [{"labels.pivot_bars": v} for v in (2, 3, 5)]
    assert space.grid_size() == 3
    assert trial_name({"train.lr": 0.0032, "model.d_model": 64}) == "lr=3.2e-3 d_model=64"
    # the shipped demo space is valid as it stands
    demo = Path(__file__).resolve().parents[2] / "conf" / "sweeps" / "demo.yaml"
    assert load_space(demo, load_config(None, [])).dims


def test_the_command_refuses_before_anything_is_written(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("train.lr: {randint: [1, 5]}\n")
    home = tmp_path / "home"
    code = cli.main(["sweep", "--space", str(space), f"run.home={home}", "run.name=badsweep"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "randint" in err
    assert not (home / "mlflow.db").exists() and not (home / "sweeps").exists()
    code = cli.main(["sweep", "--space", str(tmp_path / "missing.yaml"), f"run.home={home}"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = cli.main(["sweep", "--space", str(space), "--metric", "train_loss", f"run.home={home}"])
    assert code == 2 and "train.lr" in capsys.readouterr().err
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    code = cli.main(["sweep", "--space", str(space), "--metric", "loss", f"run.home={home}"])
    assert code == 2 and "holdout/total_loss" in capsys.readouterr().err
    code = cli.main(["sweep", "--space", str(space), "tracking.enabled=false", f"run.home={home}"])
    assert code == 2 and "tracking.enabled=true" in capsys.readouterr().err
    code = cli.main(["sweep", f"run.home={home}"])
    assert code == 2 and "--space" in capsys.readouterr().err
    code = cli.main(["sweep", "--resume", f"run.home={home}", "run.name=never"])
    assert code == 2 and "no unfinished sweep" in capsys.readouterr().err
    assert not (home / "mlflow.db").exists() and not (home / "sweeps").exists()
