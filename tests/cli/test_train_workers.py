"""``candleray train train.workers=2``: a data-parallel run end to end, as a user starts it."""

from __future__ import annotations

import json
import re

import pytest
from support import CLI_TINY_MODEL

from pipelines import cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_train_with_two_ranks_runs_end_to_end(ray_cluster, make_cfg, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg()
    args = [
        "train",
        f"run.home={tmp_path}",
        f"run.name={cfg.run.name}",
        "tracking.enabled=true",
        "data.symbols=[synthetic:SYN0]",
        "data.synthetic.length=400",
        "train.workers=2",
        "train.worker_num_cpus=0.5",
        *CLI_TINY_MODEL,
    ]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert re.search(r"epoch 1/1 means: loss [\d.]+", captured.err), captured.err  # progress
    assert "Held-out evaluation" in out and "synthetic:SYN0@1h" in out
    run_id = re.search(r"MLflow run (\w+)", out).group(1)
    assert cli.main(["checkpoints", f"run.home={tmp_path}", f"run.name={cfg.run.name}"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed and listed[-1]["kind"] == "batch" and listed[-1]["step"] > 0
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.data.params["train.workers"] == "2"
    assert run.data.params["train.placement_strategy"] == "PACK"
    # the params alone would pass with train.workers ignored: two rank actors of one group
    # really trained, and the run's end left neither running. The GCS's own table: the state
    # API needs the dashboard, which the session cluster does not start
    import time

    from ray._private.state import actors

    def ranks() -> dict[str, str]:
        pattern = rf"{re.escape(cfg.run.name)}\.rank\d\.\w+"
        return {
            a["Name"]: a["State"]
            for a in actors().values()
            if re.fullmatch(pattern, a.get("Name") or "")
        }

    got = ranks()
    assert len({name.rsplit(".", 1)[1] for name in got}) == 1 and len(got) == 2, got
    deadline = time.monotonic() + 120  # a hang guard: a kill reaches the GCS asynchronously
    while set(got.values()) != {"DEAD"} and time.monotonic() < deadline:
        time.sleep(0.2)
        got = ranks()
    assert set(got.values()) == {"DEAD"}, got
