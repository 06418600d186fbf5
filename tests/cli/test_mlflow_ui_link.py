"""The MLflow link ``candleray train`` prints opens the runs table of the model-training view
in a real browser, for a new user (MLflow 3.17 opens such a user's experiments as GenAI
ones, whatever the experiment's kind tag says).

Playwright drives Debian's Chromium (``make browser``) against the session's ``mlflow
server``; the screenshot is kept under the test's tmp dir.
"""

from __future__ import annotations

import re
import shutil

import pytest
from mlflow.tracking import MlflowClient
from support import CLI_TINY_MODEL

from pipelines import cli
from pipelines.tracking.experiments import link_lines, ui_base

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


def test_the_printed_link_opens_the_runs_table(ray_cluster, make_cfg, server_uri, tmp_path, capsys):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    cfg = make_cfg()
    args = ["train", f"run.home={tmp_path}", f"run.name={cfg.run.name}", "tracking.enabled=true"]
    args += [f"tracking.uri={server_uri}", "data.symbols=[synthetic:SYN0]"]
    args += ["data.synthetic.length=300", *CLI_TINY_MODEL]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"MLflow run (\w+) ", out).group(1)
    link = re.search(r"MLflow UI: (\S+)", out).group(1)
    assert (
        link.startswith(f"{server_uri}/#/experiments/") and "workflowType=machine_learning" in link
    )
    run_name = MlflowClient(server_uri).get_run(run_id).info.run_name
    assert run_name

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})  # a new user
            page.set_default_timeout(90_000)  # a loaded 2-core machine renders slowly
            page.goto(link)
            table = page.get_by_role("grid").or_(page.get_by_role("table")).first
            expect(table).to_be_visible()
            expect(table.get_by_text(run_name, exact=True)).to_be_visible()
            page.screenshot(path=str(tmp_path / "mlflow-runs.png"))
            # still the runs view of the model-training workflow, not traces
            assert re.search(r"#/experiments/\d+/runs\?.*workflowType=machine_learning", page.url)
        finally:
            browser.close()


def test_links_never_carry_credentials():
    assert ui_base("https://bob:secret@mlflow.internal:5000/") == "https://mlflow.internal:5000"
    assert ui_base("sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5000"
    assert ui_base("sqlite:////tmp/mlflow.db", "http://ui.example/mlflow/") == (
        "http://ui.example/mlflow"
    )


def test_make_mlflow_ui_prints_each_experiments_runs_link(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "no experiment yet" in "\n".join(link_lines(uri))
    eid = MlflowClient(uri).create_experiment("demo")
    lines = link_lines(uri)
    expected = f"http://127.0.0.1:5000/#/experiments/{eid}/runs?workflowType=machine_learning"
    assert f"  demo: {expected}" in lines
    assert not any("Default" in line for line in lines)  # MLflow's own empty experiment


def test_backtest_prints_the_runs_link_of_its_experiment(ray_cluster, make_cfg, tmp_path, capsys):
    import torch

    from actors import spec_from_config
    from conf import to_dict
    from pipelines.model.checkpoints import CheckpointStore
    from pipelines.model.trainer import Trainer

    cfg = make_cfg("tracking.enabled=true")
    trainer = Trainer(spec_from_config(cfg), cfg.train, torch.device("cpu"), seed=1)
    info = CheckpointStore(f"{cfg.checkpoint.uri}/{cfg.run.name}").save(
        trainer.state(), {"step": 5, "config": to_dict(cfg)}
    )
    args = ["backtest", "--symbols", "synthetic:SYN0", "--checkpoint", info.path]
    args += [f"run.home={tmp_path}", f"run.name={cfg.run.name}", "tracking.enabled=true"]
    assert cli.main([*args, "data.synthetic.length=600", "features.window=16"]) == 0
    out = capsys.readouterr().out
    assert cfg.tracking.uri is not None
    experiment = MlflowClient(cfg.tracking.uri).get_experiment_by_name(f"{cfg.run.name}-backtest")
    link = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    assert f"MLflow UI: {link}?workflowType=machine_learning  (start it: mlflow ui" in out, out


def test_live_prints_the_runs_link_of_its_sessions(ray_cluster, make_cfg, tmp_path, capsys):
    cfg = make_cfg("tracking.enabled=true")
    args = ["live", "--symbols", "synthetic:SYN0", "--candles", "5", "--speed", "0", "--json"]
    args += [f"run.home={tmp_path}", f"run.name={cfg.run.name}", "tracking.enabled=true"]
    args += ["data.synthetic.length=600", "live.hosts=1", *CLI_TINY_MODEL]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert cfg.tracking.uri is not None
    experiment = MlflowClient(cfg.tracking.uri).get_experiment_by_name(f"{cfg.run.name}-live")
    link = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert f"MLflow UI: http://127.0.0.1:5000/{link}" in captured.err, captured.err
