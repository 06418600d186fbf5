"""A 4-trial sweep of a tiny model with ASHA, one trial planted poor (a learning rate far too
small), against a real ``mlflow server``: the structure MLflow shows, the early stop, the
best model promoted with alias ``best`` (it loads and predicts), and the printed link opened in
Chromium showing the children under the parent (screenshot kept as
``$CANDLERAY_ARTIFACTS/sweep-mlflow.png``, default tests/artifacts/, not committed).

One sweep serves every test here (module fixture): a sweep is the expensive part.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from support import tiny_sweep_overrides

from pipelines import cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CANDLERAY_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
LRS = [3.0e-3, 2.0e-3, 1.0e-3, 1.0e-7]  # the poor one last: ASHA judges it against the rest
EPOCHS = 3
TINY = tiny_sweep_overrides(length=600, epochs=EPOCHS)


@pytest.fixture(scope="module")
def sweep(ray_cluster, server_uri, tmp_path_factory):
    home = tmp_path_factory.mktemp("sweep")
    space = home / "space.yaml"
    space.write_text(f"train.lr: {{grid: {json.dumps(LRS)}}}\n")
    args = ["sweep", "--space", str(space), "--trials", "1", "--scheduler", "asha"]
    args += ["--max-concurrent", "2", f"run.home={home}", "run.name=sw4"]
    args += [f"tracking.uri={server_uri}", *TINY]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args)
    text = out.getvalue()
    assert code == 0, text
    client = MlflowClient(server_uri)
    exp = client.get_experiment_by_name("sw4-sweep")
    assert exp is not None
    return {"text": text, "client": client, "exp": exp, "home": home, "uri": server_uri}


def _runs(sweep):
    runs = sweep["client"].search_runs([sweep["exp"].experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_parent_and_children_hold_what_the_compare_view_needs(sweep):
    client = sweep["client"]
    parents, children = _runs(sweep)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["scheduler"] == "asha" and p["metric"] == "holdout/total_loss"
    assert p["space.train.lr"].startswith("grid[") and p["trial_count"] == "4"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["train.lr"]) for c in children) == sorted(LRS)
    assert {c.info.run_name for c in children} == {"lr=3e-3", "lr=2e-3", "lr=1e-3", "lr=1e-7"}
    for c in children:  # the resolved config, not just the swept key
        assert c.data.params["model.d_model"] == "16" and c.data.params["train.epochs"] == "3"
        history = client.get_metric_history(c.info.run_id, "holdout/total_loss")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and history
        assert "holdout/direction_accuracy" in c.data.metrics
        assert any(a.path == "checkpoint" for a in client.list_artifacts(c.info.run_id))
    stopped = [c for c in children if c.data.tags.get("candleray.trial_status") == "stopped early"]
    assert stopped, "ASHA stopped no trial"
    for c in stopped:
        assert c.info.status == "KILLED" and "ASHA" in c.data.tags["candleray.stop_reason"]
        assert len(client.get_metric_history(c.info.run_id, "holdout/total_loss")) < EPOCHS
    poor = next(c for c in children if c.info.run_name == "lr=1e-7")
    assert parent.data.tags["candleray.best_child_run_id"] != poor.info.run_id
    local = client.download_artifacts(parent.info.run_id, "sweep/results.json", str(sweep["home"]))
    table = json.loads(Path(local).read_text())["trials"]
    bests = [r["best"] for r in table]
    assert len(table) == 4 and bests == sorted(bests)  # sorted by the metric, best first
    assert table[0]["run_id"] == parent.data.tags["candleray.best_child_run_id"]
    assert "lr=3e-3" in sweep["text"] and "best: trial" in sweep["text"]


def test_alias_best_is_the_best_trial_and_its_checkpoint_predicts(sweep, tmp_path):
    from pipelines.data.features import n_features
    from pipelines.model.checkpoints import CheckpointStore
    from pipelines.model.network import ModelSpec
    from serve.predictor import Predictor

    client = sweep["client"]
    parent = _runs(sweep)[0][0]
    mv = client.get_model_version_by_alias("sw4-sweep", "best")
    assert mv.run_id == parent.data.tags["candleray.best_child_run_id"]
    folder = client.download_artifacts(
        mv.run_id, mv.source.split("/artifacts/", 1)[1], str(tmp_path)
    )
    state, meta = CheckpointStore(folder).load_latest_good()
    assert meta["kind"] == "sweep" and meta["is_best"]
    from conf import config_from_dict

    cfg = config_from_dict(meta["config"])
    assert cfg.train.lr == float(client.get_run(mv.run_id).data.params["train.lr"])
    spec = ModelSpec.from_config(cfg.model, n_features(0), cfg.features.window)
    predictor = Predictor(spec, "cpu")
    predictor.load(state["model"], int(meta["step"]))
    x = np.random.default_rng(0).standard_normal((5, spec.window, spec.n_features))
    p = predictor.predict(x.astype(np.float32))
    assert p.probs.shape == (5, 3) and np.allclose(p.probs.sum(1), 1.0, atol=1e-4)


def test_the_printed_link_shows_the_children_under_the_parent(sweep):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    link = re.search(r"MLflow UI \(the sweep's runs[^:]*: (\S+)", sweep["text"]).group(1)
    assert link.startswith(f"{sweep['uri']}/#/experiments/") and "machine_learning" in link
    parent = _runs(sweep)[0][0]

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.set_default_timeout(90_000)  # a loaded 2-core machine renders slowly
            page.goto(link)
            table = page.get_by_role("grid").or_(page.get_by_role("table")).first
            expect(table).to_be_visible(timeout=90_000)
            name = parent.info.run_name
            expect(table.get_by_text(name, exact=True)).to_be_visible(timeout=90_000)
            # the parent's row folds its trials; its name cell's toggle unfolds them
            cell = page.get_by_role("gridcell").filter(has=page.get_by_text(name, exact=True))
            cell.locator('button[data-component-id*="runnamecellrenderer"]').click()
            for lr in ("lr=3e-3", "lr=2e-3", "lr=1e-3", "lr=1e-7"):
                expect(table.get_by_text(lr, exact=True)).to_be_visible(timeout=90_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "sweep-mlflow.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 0
        finally:
            browser.close()
