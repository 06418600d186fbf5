"""Many-symbol backtests: Ray fan-out vs in-process, failures, the live actor, MLflow, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from support import tiny_overrides

from actors import ModelClient, spec_from_config
from conf import to_dict
from pipelines.backtest.report import (
    format_table,
    log_mlflow,
    metric_prefix,
    report_dict,
    trades_frame,
    write_json,
)
from pipelines.backtest.runner import (
    BacktestJob,
    BacktestRun,
    SymbolOutcome,
    _portfolio,
    jobs_for,
    run_backtests,
    run_in_process,
    run_job,
)
from pipelines.backtest.weights import BacktestWeights, resolve_weights, weights_from_actor
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.errors import CheckpointError
from pipelines.model.checkpoints import CheckpointStore
from pipelines.model.trainer import Trainer

GOOD = [f"synthetic:S{i}" for i in range(5)]
BAD = {"synthetic:BAD@7q": ("ConfigError", "'7q'"), "sample:NOPE": ("DataSourceError", "NOPE")}


def random_weights(cfg, seed: int = 3) -> BacktestWeights:
    spec = spec_from_config(cfg)
    trainer = Trainer(spec, cfg.train, torch.device("cpu"), seed=seed)
    return BacktestWeights(
        spec, trainer.weights_cpu(), "test", "random", 0, cfg.data.extra_timeframes
    )


def same_stats(a: dict, b: dict) -> bool:
    return all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


@pytest.mark.ray
def test_parallel_run_equals_in_process_and_reports_bad_symbols(ray_cluster, make_cfg):
    cfg = make_cfg(
        "model.device=cpu",
        "backtest.task_num_cpus=1",
        "backtest.confidence=0.4",
        "backtest.commission=0.001",
        "backtest.walk_forward=every_candle",
        "backtest.retrain_every=100",
    )
    weights = random_weights(cfg)
    symbols = [*GOOD[:3], *BAD, *GOOD[3:]]
    seen: list[tuple[str, int]] = []
    run = run_backtests(
        jobs_for(symbols, cfg), weights, cfg, on_done=lambda o, d, n: seen.append((o.name, d))
    )
    assert [d for _, d in seen] == list(range(1, len(symbols) + 1)) and len(seen) == 7
    assert [o.job.symbol for o in run.outcomes] == symbols  # job order, not finishing order
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tasks: identical arithmetic
    try:
        for o in run.outcomes:
            if o.job.symbol in BAD:
                etype, needle = BAD[o.job.symbol]
                assert not o.ok and o.error_type == etype and needle in o.error
                continue
            assert o.ok, o.error
            ref = run_job(o.job, weights, cfg)
            got = o.backtest
            assert got.inference is None  # the task sent back only what the reports use
            assert got.symbol == ref.symbol == f"{o.job.symbol}@1h"
            np.testing.assert_array_equal(got.actions, ref.actions)
            pd.testing.assert_series_equal(got.result.equity, ref.result.equity)
            pd.testing.assert_frame_equal(got.result.trades, ref.result.trades)
            assert same_stats(dict(got.result.stats), dict(ref.result.stats))
            assert same_stats(got.model | {"confusion": 0}, ref.model | {"confusion": 0})
            assert got.model["confusion"] == ref.model["confusion"]
            assert got.training == ref.training and got.training["steps"] > 0
            assert got.result.stats["n_trades"] > 0
    finally:
        torch.set_num_threads(prev)
    assert run.portfolio is not None and run.portfolio.stats["symbols"] == 5
    table = format_table(run)
    assert "PORTFOLIO" in table and "DataSourceError" in table and "ConfigError" in table


@pytest.mark.ray
def test_walk_forward_from_actor_weights_leaves_the_live_actor_alone(ray_cluster, make_cfg):
    cfg = make_cfg(
        "model.device=cpu",
        "backtest.task_num_cpus=1",
        "backtest.walk_forward=every_candle",
        "backtest.retrain_every=64",
    )
    with pytest.raises(CheckpointError, match="no ModelActor named .* is running"):
        resolve_weights(
            cfg
        )  # neither an actor nor a checkpoint: a clear error, and no actor started
    assert weights_from_actor(cfg) is None
    client = ModelClient.connect(cfg)
    import ray

    try:
        before = client.call("weights_version")
        snap = client.call("weights_snapshot")
        state_before = {k: v.clone() for k, v in ray.get(snap["ref"]).items()}
        weights = resolve_weights(cfg)
        assert weights.source == "actor" and weights.version == f"{before[0]}/v{before[1]}"
        run = run_backtests(jobs_for(GOOD[:2], cfg), weights, cfg)
        assert all(o.ok for o in run.outcomes)
        assert all(o.backtest.training["steps"] > 0 for o in run.outcomes)
        assert client.call("weights_version") == before
        after = ray.get(client.call("weights_snapshot")["ref"])
        assert all(torch.equal(after[k], v) for k, v in state_before.items())
        assert client.call("metrics")["steps"] == before[1]
    finally:
        ray.kill(client.handle)


def test_runner_keeps_only_what_reports_use_and_the_reports_are_unchanged(make_cfg):
    # over 1,000 symbols the per-window model outputs were most of what the driver held;
    # the runner drops them, and every report must still read exactly as from full results
    cfg = make_cfg("model.device=cpu", "backtest.confidence=0.4")
    weights = random_weights(cfg)
    jobs = jobs_for([GOOD[0], "sample:NOPE", GOOD[1], GOOD[2]], cfg)
    run = run_in_process(jobs, weights, cfg)
    full = [SymbolOutcome(j, run_job(j, weights, cfg)) for j in jobs if j.symbol != "sample:NOPE"]
    full.insert(1, run.outcomes[1])  # the failed one, as the runner reports it
    old = BacktestRun(tuple(full), _portfolio(full, cfg), run.weights, run.seconds)
    assert all(o.backtest.inference is not None for o in old.outcomes if o.ok)
    assert [o.ok for o in run.outcomes] == [True, False, True, True]
    for o in run.outcomes:
        if o.ok:
            assert o.backtest.inference is None  # no per-window arrays kept
            assert len(o.backtest.actions) == o.backtest.result.stats["bars"]

    def comparable(r: BacktestRun) -> dict:
        d = report_dict(r, cfg)
        d.pop("created")
        for s in d["symbols"]:
            s.pop("seconds", None)  # wall time of each symbol's run
        return d

    assert comparable(run) == comparable(old)
    assert format_table(run) == format_table(old)
    pd.testing.assert_frame_equal(trades_frame(run), trades_frame(old))
    pd.testing.assert_series_equal(run.portfolio.equity, old.portfolio.equity)


def test_mlflow_run_holds_params_metrics_and_artifacts(make_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'bt.db'}"
    cfg = make_cfg(
        "model.device=cpu",
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        "backtest.confidence=0.4",
    )
    weights = random_weights(cfg)
    run = run_in_process(jobs_for([GOOD[0], "sample:NOPE", GOOD[1]], cfg), weights, cfg)
    run_id = log_mlflow(run, cfg)
    client = MlflowClient(tracking_uri=uri)
    got = client.get_run(run_id)
    assert client.get_experiment(got.info.experiment_id).name == f"{cfg.run.name}-backtest"
    params = got.data.params
    assert params["backtest.confidence"] == "0.4" and params["weights.source"] == "test"
    assert params["features.window"] == "16" and "synthetic:S0" in params["symbols"]
    metrics = got.data.metrics
    for o in run.outcomes:
        if o.ok:
            prefix = metric_prefix(o.name)
            assert prefix == o.name.replace(":", "_").replace("@", "_")
            assert metrics[f"{prefix}/total_return"] == pytest.approx(
                o.backtest.result.stats["total_return"]
            )
            assert metrics[f"{prefix}/action_acc"] == pytest.approx(o.backtest.model["action_acc"])
    assert metrics["portfolio/total_return"] == pytest.approx(run.portfolio.stats["total_return"])
    assert metrics["portfolio/max_drawdown"] == pytest.approx(run.portfolio.stats["max_drawdown"])
    assert "portfolio/sharpe" in metrics and metrics["symbols_failed"] == 1
    assert "sample:NOPE (DataSourceError)" in got.data.tags["candleray.failed_symbols"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"equity.png", "trades.csv", "report.json"} <= names
    local = client.download_artifacts(run_id, "", str(tmp_path / "art"))
    trades = pd.read_csv(f"{local}/trades.csv")
    n_trades = sum(
        len(o.backtest.result.trades) + len(o.backtest.result.open_trades)
        for o in run.outcomes
        if o.ok
    )
    assert len(trades) == n_trades > 0 and set(trades["symbol"]) <= {o.name for o in run.outcomes}
    with open(f"{local}/equity.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(f"{local}/report.json") as f:
        report = json.load(f)
    assert report["weights"]["source"] == "test" and report["code_version"]
    assert got.info.status == "FINISHED"


def _cli_overrides(tmp_path, name: str) -> list[str]:
    return [*tiny_overrides(tmp_path, name), "model.device=cpu", "backtest.task_num_cpus=1"]


@pytest.mark.ray
def test_cli_backtest_from_a_checkpoint_writes_the_report(ray_cluster, tmp_path, capsys):
    overrides = _cli_overrides(tmp_path, f"t{uuid.uuid4().hex[:10]}")
    cfg = load_config(None, overrides)
    trainer = Trainer(spec_from_config(cfg), cfg.train, torch.device("cpu"), seed=1)
    info = CheckpointStore(f"{cfg.checkpoint.uri}/{cfg.run.name}").save(
        trainer.state(), {"step": 5, "config": to_dict(cfg)}
    )
    out = tmp_path / "report.json"
    rc = main(
        [
            "backtest",
            "--symbols",
            "synthetic:A,synthetic:B,sample:NOPE",
            "--checkpoint",
            info.path,
            "--range",
            "2024-01-05:2024-01-20",
            "--out",
            str(out),
            *overrides,
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "FAILED sample:NOPE: DataSourceError" in printed and "PORTFOLIO" in printed
    report = json.loads(out.read_text())
    assert report["weights"] == {
        **report["weights"],
        "source": "checkpoint",
        "version": info.path,
        "step": 5,
    }
    assert report["config"]["backtest"]["since"] == "2024-01-05T00:00:00"
    ok = [s for s in report["symbols"] if s["ok"]]
    assert [s["symbol"] for s in ok] == ["synthetic:A@1h", "synthetic:B@1h"]
    assert all(
        s["stats"]["start"].startswith("2024-01-05") and s["stats"]["bars"] == 15 * 24 + 1
        for s in ok
    )
    assert all(0 <= s["model"]["direction_acc"] <= 1 for s in ok)
    assert report["portfolio"]["symbols"] == 2 and report["code_version"]
    # "latest" finds the same checkpoint of run.name
    rc = main(
        [
            "backtest",
            "--symbols",
            "synthetic:A",
            "--checkpoint",
            "latest",
            "--out",
            str(out),
            *overrides,
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["weights"]["step"] == 5


@pytest.mark.parametrize(
    "bad", ["2024-13-45:2024-02-01", "2024-02-01:2024-01-01", "yesterday", "a:b:c"]
)
def test_cli_bad_range_is_a_user_error(tmp_path, capsys, bad):
    rc = main(
        ["backtest", "--symbols", "synthetic:A", "--range", bad, *_cli_overrides(tmp_path, "t")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "--range" in err and "2024-01-01" in err  # names the option and shows the form


def test_jobs_take_the_backtest_range_else_the_data_range(make_cfg):
    cfg = make_cfg("data.since='2024-01-02'")
    assert jobs_for(["synthetic:A"], cfg) == [BacktestJob("synthetic:A", "2024-01-02", None)]
    cfg = dataclasses.replace(
        cfg, backtest=dataclasses.replace(cfg.backtest, since="2024-01-03", until="2024-01-09")
    )
    assert jobs_for(["synthetic:A"], cfg) == [
        BacktestJob("synthetic:A", "2024-01-03", "2024-01-09")
    ]
    run = run_in_process(jobs_for(["synthetic:A"], cfg), random_weights(cfg), cfg)
    eq = run.outcomes[0].backtest.result.equity
    assert eq.index[0] == pd.Timestamp("2024-01-03", tz="UTC") and eq.index[-1] == pd.Timestamp(
        "2024-01-09", tz="UTC"
    )
    write_json(run, cfg, cfg.run.home + "/r.json")  # JSON-safe: no NaN, timestamps as text


def test_a_job_without_a_range_uses_the_configured_one(make_cfg):
    cfg = make_cfg("model.device=cpu", "backtest.since=2024-01-10", "data.until=2024-01-20T00:00")
    out = run_job(BacktestJob("synthetic:S0"), random_weights(cfg), cfg)
    eq = out.result.equity
    assert eq.index[0] == pd.Timestamp("2024-01-10", tz="UTC")
    assert eq.index[-1] == pd.Timestamp("2024-01-20", tz="UTC")
    own = run_job(BacktestJob("synthetic:S0", "2024-01-15"), random_weights(cfg), cfg)
    assert own.result.equity.index[0] == pd.Timestamp("2024-01-15", tz="UTC")


EURUSD_SPAN = "the series covers 2017-04-19T09:00:00+00:00 to 2018-02-07T15:00:00+00:00"


@pytest.mark.ray
def test_cli_range_without_candles_names_the_series_span_and_the_option(
    ray_cluster, tmp_path, capsys
):
    overrides = _cli_overrides(tmp_path, f"t{uuid.uuid4().hex[:10]}")
    cfg = load_config(None, overrides)
    trainer = Trainer(spec_from_config(cfg), cfg.train, torch.device("cpu"), seed=1)
    info = CheckpointStore(f"{cfg.checkpoint.uri}/{cfg.run.name}").save(
        trainer.state(), {"step": 1, "config": to_dict(cfg)}
    )
    base = ["backtest", "--symbols", "sample:EURUSD", "--checkpoint", info.path, *overrides]
    assert main([*base, "--range", "2017-01-01:2017-03-01"]) == 1
    printed = capsys.readouterr().out
    assert (
        "FAILED sample:EURUSD: DataSourceError: sample:EURUSD@1h: no candles in "
        "[2017-01-01T00:00:00, 2017-03-01T00:00:00] (set by --range); " + EURUSD_SPAN
    ) in printed
    assert "(5000 candles): change --range to overlap it" in printed
    # the same range from the config names the config keys
    assert main([*base, "backtest.since=2017-01-01", "backtest.until=2017-03-01"]) == 1
    printed = capsys.readouterr().out
    assert "(set by backtest.since/backtest.until); " + EURUSD_SPAN in printed
    assert main([*base, "backtest.since=2019-01-01", "data.until=2019-06-01"]) == 1
    assert "(set by backtest.since/data.until); " + EURUSD_SPAN in capsys.readouterr().out


def test_cli_data_range_without_candles_names_the_series_span(tmp_path, capsys):
    rc = main(
        [
            "train",
            *_cli_overrides(tmp_path, "t"),
            "data.symbols=[sample:EURUSD]",
            "data.since=2019-01-01",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "no candles in [2019-01-01, end] (set by data.since); " + EURUSD_SPAN in err
