"""Where a sweep's folder goes and which one ``--resume`` picks: no Ray, no MLflow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conf import to_dict
from pipelines import cli
from pipelines.config import load_config
from pipelines.errors import ConfigError, NotFoundError
from pipelines.sweep.state import SweepState, latest_unfinished, new_sweep_folder


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


def test_resume_picks_only_its_own_run_names_sweeps(tmp_path):
    demo, other = _cfg(tmp_path, "demo"), _cfg(tmp_path, "demo-x")
    mine = _sweep(demo, "demo-20260101-000000")
    _sweep(other, "demo-x-20260102-000000")  # newer, and "demo-*" would match it
    assert latest_unfinished(demo) == mine
    # a folder named like demo's whose state belongs to another run is not demo's
    _sweep(other, "demo-20260103-000000")
    assert latest_unfinished(demo) == mine
    _sweep(demo, "demo-20260104-000000", status="finished")
    assert latest_unfinished(demo) == mine
    with pytest.raises(NotFoundError, match="run.name='nope'"):
        latest_unfinished(_cfg(tmp_path, "nope"))


def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import pipelines.sweep.state as st

    monkeypatch.setattr(st.time, "strftime", lambda fmt: "20260101-000000")
    cfg = _cfg(tmp_path, "demo")
    first, second = new_sweep_folder(cfg), new_sweep_folder(cfg)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name == "demo-20260101-000000"
    SweepState(second.name, str(second), {}, "s.yaml", to_dict(cfg)).save()
    assert latest_unfinished(cfg) == second  # the suffixed one is still found by --resume


def test_a_resumed_trial_keeps_its_best_from_before_the_interruption():
    from pipelines.sweep.runner import Sweep
    from pipelines.sweep.state import TrialRow, record_result

    metric = "holdout/total_loss"

    def report(epoch, loss, best, best_epoch):
        return {
            "epoch": epoch,
            metric: loss,
            "holdout/direction_accuracy": 0.5,
            "best": best,
            "best_epoch": best_epoch,
            "best_direction_accuracy": 0.61,
        }

    # trial a: its best (0.40) at epoch 1, then interrupted; the resumed run sees epochs 3-4 only
    a = TrialRow("a", "a", {})
    for r in (report(3, 0.70, 0.40, 1), report(4, 0.65, 0.40, 1)):
        assert record_result(a, r, metric) == r[metric]
    assert (a.best, a.best_epoch, a.epochs, a.direction_accuracy) == (0.40, 1, 4, 0.61)
    b = TrialRow("b", "b", {})  # trial b ran after the resume, best 0.50 at its last epoch
    record_result(b, report(4, 0.50, 0.50, 4), metric)
    sweep = Sweep.__new__(Sweep)
    sweep.rows, sweep.mode = {"a": a, "b": b}, "min"
    winner = sweep.best()
    assert winner is not None and winner.trial_id == "a"
