"""A sweep with failing trials among good ones, stopped by Ctrl-C once a trial has finished,
then resumed: the stop leaves nothing running and the parent KILLED; the resume does not rerun
the finished trial, creates no second child run for any trial, and ends the same parent
FINISHED. The failing trials (a CUDA device no node has) are FAILED with their error while
the others finish.

The command runs as a user starts it, in a session of its own (so every process it and its
Ray cluster start can be counted), SIGINT reset to its default: a background job of a
non-interactive shell (CI) inherits it ignored.
"""

from __future__ import annotations

import json
import signal

import pytest
from mlflow.tracking import MlflowClient
from support import SessionCommand, tiny_sweep_overrides

pytestmark = [pytest.mark.slow]

RUN_S = 420.0  # Ray's start and four trials on a loaded 2-core machine
TINY = tiny_sweep_overrides(length=400, epochs=2)


def test_failed_trials_interrupt_and_resume_without_rerun_or_duplicates(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {grid: [1.0e-3, 3.0e-3]}\nmodel.device: {grid: [cpu, 'cuda:99']}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [f"run.home={tmp_path}", "run.name=swr", f"tracking.uri={uri}", *TINY]
    first = SessionCommand(
        ["sweep", "--space", str(space), "--trials", "1", "--scheduler", "fifo"]
        + ["--max-concurrent", "1", *base],
        tmp_path,
    )
    first.wait_for("device=cpu: finished after 2 epoch(s)", RUN_S)
    first.proc.send_signal(signal.SIGINT)
    rc, out, left = first.finish(180)
    assert not left, f"left running after Ctrl-C: {left}"
    assert rc == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("swr-sweep")
    parents = client.search_runs([exp.experiment_id], "tags.`candleray.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    before = {
        r.data.tags["candleray.trial_id"]: r
        for r in client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")
    }
    done = [r for r in before.values() if r.info.status == "FINISHED"]
    assert len(done) >= 1
    steps_before = {
        r.info.run_id: [
            m.step for m in client.get_metric_history(r.info.run_id, "holdout/total_loss")
        ]
        for r in done
    }

    second = SessionCommand(["sweep", "--resume", "--json", *base], tmp_path)
    rc, out, left = second.finish(RUN_S)
    assert rc == 0, out[-3000:]
    assert not left
    assert "resuming sweep" in out
    # --json: one object on stdout (progress lines go to stderr, merged here)
    result, _ = json.JSONDecoder().raw_decode(out[out.index("\n{\n") + 1 :])
    assert not result["interrupted"] and len(result["trials"]) == 4
    assert sorted(r["status"] for r in result["trials"]) == ["failed"] * 2 + ["finished"] * 2
    assert result["registered"]["alias"] == "best" and "workflowType" in result["link"]
    parents = client.search_runs([exp.experiment_id], "tags.`candleray.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")
    ids = [c.data.tags["candleray.trial_id"] for c in children]
    assert len(children) == 4 and len(set(ids)) == 4, ids  # one child run per trial, ever
    for trial_id, run in before.items():  # the runs made before the stop are the ones kept
        assert (
            next(c for c in children if c.data.tags["candleray.trial_id"] == trial_id).info.run_id
            == run.info.run_id
        )
    for run_id, steps in steps_before.items():  # finished before the stop: not rerun
        assert [m.step for m in client.get_metric_history(run_id, "holdout/total_loss")] == steps
    by_device = {}
    for c in children:
        by_device.setdefault(c.data.params["model.device"], []).append(c)
    assert {c.info.status for c in by_device["cpu"]} == {"FINISHED"}
    assert {c.info.status for c in by_device["cuda:99"]} == {"FAILED"}
    for c in by_device["cuda:99"]:
        assert "cuda" in c.data.tags["candleray.error"].lower()
    for c in by_device["cpu"]:
        assert [m.step for m in client.get_metric_history(c.info.run_id, "holdout/total_loss")] == [
            1,
            2,
        ]
    mv = client.get_model_version_by_alias("swr-sweep", "best")
    assert mv.run_id in {c.info.run_id for c in by_device["cpu"]}
