"""The ``candleray`` command as a user runs it."""

from __future__ import annotations

import pytest
from support import CLI_TINY_MODEL

from pipelines import cli

pytestmark = [pytest.mark.ray]


def test_train_runs_end_to_end_and_resumes(ray_cluster, make_cfg, tmp_path, capsys):
    cfg = make_cfg()
    args = [
        "train",
        f"run.home={tmp_path}",
        f"run.name={cfg.run.name}",
        "tracking.enabled=true",
        "data.symbols=[synthetic:SYN0]",
        "data.synthetic.length=400",
        *CLI_TINY_MODEL,
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Held-out evaluation" in out and "synthetic:SYN0@1h" in out and "MLflow run" in out
    assert cli.main(["checkpoints", f"run.home={tmp_path}", f"run.name={cfg.run.name}"]) == 0
    listed = capsys.readouterr().out
    assert '"kind": "batch"' in listed
    assert cli.main(args) == 0  # a second run resumes the same model from its checkpoint
    assert "resuming" in capsys.readouterr().out


def test_user_errors_exit_2_with_the_reason(capsys):
    assert cli.main(["train", "model.d_model=abc"]) == 2
    assert "model.d_model: expected an integer" in capsys.readouterr().err
    assert cli.main(["train", "data.symbols=[sample:NOPE]"]) == 2
    assert "no sample series named 'NOPE'" in capsys.readouterr().err


def test_config_prints_the_resolved_yaml(capsys):
    assert cli.main(["config", "model.d_model=128"]) == 0
    assert "d_model: 128" in capsys.readouterr().out
