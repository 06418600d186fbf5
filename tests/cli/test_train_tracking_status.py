"""``candleray train`` says where its MLflow run stands, also while the store is down."""

from __future__ import annotations

import re

import pytest
from support import CLI_TINY_MODEL, free_port

from pipelines import cli

pytestmark = [pytest.mark.ray]


def test_train_with_the_store_down_prints_the_tracking_status(
    ray_cluster, make_cfg, tmp_path, capsys
):
    cfg = make_cfg()
    port = free_port()  # nothing listens there: every attempt to open the run is refused
    args = [
        "train",
        f"run.home={tmp_path}",
        f"run.name={cfg.run.name}",
        "tracking.enabled=true",
        f"tracking.uri=http://127.0.0.1:{port}",
        "ray.call_timeout_s=30",  # the writer's process starts in time on a loaded machine
        "data.symbols=[synthetic:SYN0]",
        "data.synthetic.length=300",
        *CLI_TINY_MODEL,
    ]
    assert cli.main(args) == 0  # the store being down does not stop training
    out = capsys.readouterr().out
    assert "MLflow run None" not in out
    line = re.search(r"MLflow run .*", out).group(0)
    assert re.search(r"MLflow run \(not open yet\) .*\(opening; \d+ writes pending", line), line
    assert re.search(r"\d+ failed attempts? to open the run", line), line
    assert re.search(rf"last error: .*127\.0\.0\.1:{port}", out), out
    assert "Held-out evaluation" in out
