"""Every experiment candleray writes opens in MLflow 3's UI as a model-training experiment.

An experiment without ``mlflow.experimentKind`` is shown as a GenAI experiment (traces,
prompts); training and backtest experiments are created with the model-development kind,
and ones made before that are tagged when a run reopens them.
"""

from __future__ import annotations

import torch
from mlflow.tracking import MlflowClient

from actors import spec_from_config
from pipelines.backtest.report import log_mlflow
from pipelines.backtest.runner import jobs_for, run_in_process
from pipelines.backtest.weights import BacktestWeights
from pipelines.model.trainer import Trainer
from pipelines.tracking.tracker import Tracker

KIND = "mlflow.experimentKind"


def kind_of(uri: str, name: str) -> str | None:
    return MlflowClient(tracking_uri=uri).get_experiment_by_name(name).tags.get(KIND)


def test_a_training_experiment_is_created_as_model_development(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "fresh"):
        pass
    assert kind_of(uri, "fresh") == "custom_model_development"


def test_an_untagged_experiment_is_tagged_when_a_run_reopens_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mc = MlflowClient(tracking_uri=uri)
    mc.create_experiment("older", artifact_location=(tmp_path / "art").as_uri())
    mc.create_experiment("chosen", tags={KIND: "genai_development"})
    assert kind_of(uri, "older") is None
    for name in ("older", "chosen"):
        with Tracker(uri, name):
            pass
    assert kind_of(uri, "older") == "custom_model_development"
    assert kind_of(uri, "chosen") == "genai_development"  # someone chose it: kept


def test_a_backtest_experiment_is_created_as_model_development(make_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path / 'bt.db'}"
    cfg = make_cfg("model.device=cpu", "tracking.enabled=true", f"tracking.uri={uri}")
    spec = spec_from_config(cfg)
    trainer = Trainer(spec, cfg.train, torch.device("cpu"), seed=3)
    weights = BacktestWeights(
        spec, trainer.weights_cpu(), "test", "random", 0, cfg.data.extra_timeframes
    )
    log_mlflow(run_in_process(jobs_for(["synthetic:S0"], cfg), weights, cfg), cfg)
    assert kind_of(uri, f"{cfg.run.name}-backtest") == "custom_model_development"
