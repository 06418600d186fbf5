"""``candleray train`` shows and records the one hold-out cut shared by all symbols."""

from __future__ import annotations

import json
import re

import pytest
from support import CLI_TINY_MODEL

from pipelines import cli

pytestmark = [pytest.mark.ray]


def test_train_prints_and_records_the_holdout_cut(ray_cluster, make_cfg, tmp_path, capsys):
    cfg = make_cfg()
    args = [
        "train",
        f"run.home={tmp_path}",
        f"run.name={cfg.run.name}",
        "tracking.enabled=false",  # the data window goes to MLflow as it goes to checkpoints
        # the hourly symbol ends (day 17) long before the 4-hourly one (day 67)
        "data.symbols=[synthetic:SYN0@1h, synthetic:SYN1@4h]",
        "data.synthetic.length=400",
        "data.extra_timeframes=[]",
        *CLI_TINY_MODEL,
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    cut = re.search(r"hold-out cut (\S+): one time for all symbols", out).group(1)
    assert "training only (all their windows end before the cut): synthetic:SYN0@1h" in out
    assert f"Held-out evaluation, windows ending at or after {cut}" in out
    assert "synthetic:SYN1@4h" in out.split("Held-out evaluation")[1]
    assert "synthetic:SYN0@1h " not in out.split("Held-out evaluation")[1]
    # the data window the ModelActor records (checkpoint metadata, MLflow data/window.json)
    (sidecar,) = (tmp_path / "checkpoints" / cfg.run.name).glob("ckpt-*.json")
    window = json.loads(sidecar.read_text())["data"]
    assert window["holdout_cut"] == cut
    assert window["ranges"]["synthetic:SYN0@1h"]["holdout_start"] == ""
    assert window["ranges"]["synthetic:SYN1@4h"]["holdout_start"] >= cut
