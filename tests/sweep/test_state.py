"""Where a sweep's folder goes and which one ``--resume`` picks: no Ray, no MLflow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conf import to_dict
from pipelines import cli
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.sweep.state import SweepState, latest_unfinished


def _cfg(home: Path, name: str):
    return load_config(None, [f"run.home={home}", f"run.name={name}"])


def _sweep(cfg, folder_name: str, status: str = "interrupted") -> Path:
    folder = Path(cfg.sweep.storage) / folder_name
    folder.mkdir(parents=True)
    SweepState(folder_name, str(folder), {}, "s.yaml", to_dict(cfg), status=status).save()
    return folder


def test_an_s3_storage_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    # Path("s3://b/x") is the local folder s3:/b/x: the sweep used to write there silently
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "s.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    home = tmp_path / "home"
    for how in (["--space", str(space)], ["--resume"]):
        code = cli.main(["sweep", *how, f"run.home={home}", "sweep.storage=s3://bucket/sweeps"])
        assert code == 2
        err = capsys.readouterr().err
        assert "sweep.storage='s3://bucket/sweeps'" in err and "path" in err
    assert not (tmp_path / "s3:").exists() and not (home / "s3:").exists()
    assert not (home / "mlflow.db").exists()
    cfg = _cfg(home, "demo")
    cfg = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, storage="s3://b/x"))
    with pytest.raises(ConfigError, match="sweep.storage"):
        latest_unfinished(cfg)
