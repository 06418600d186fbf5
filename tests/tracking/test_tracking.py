"""Tracker: what a user sees in MLflow after training, on a sqlite store and a real server."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.tracking import MlflowClient
from support import free_port

from pipelines.errors import ConfigError, TrackingError
from pipelines.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (creating MLflow's tables costs ~1 s); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def steps_and_values(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def write_checkpoint(path: Path, payload: bytes) -> str:
    path.write_bytes(payload)
    return str(path)


def run_training_flow(uri: str, experiment: str, tmp_path: Path) -> tuple[str, str]:
    """What the ModelActor does in one run; returns (run_id, registered version)."""
    with Tracker(uri, experiment, run_name="flow", tags={"kind": "batch"}, log_every_steps=2) as t:
        t.log_params({"model": {"d_model": 64, "n_heads": 4}, "data": {"symbols": ["A", "B"]}})
        for step in range(5):
            t.log_metrics({"total_loss": 1.0 / (step + 1), "action_accuracy": 0.1 * step}, step)
        t.log_dict({"model": {"d_model": 64}}, "config.yaml")
        ckpt = write_checkpoint(tmp_path / "step-000004.pt", b"weights-v1")
        t.log_artifact(ckpt, "checkpoints")
        version = t.register_model_version(f"{experiment}-model", ckpt)
        return t.run_id, version


def check_training_flow(
    client: MlflowClient, experiment: str, run_id: str, version: str, tmp_path: Path
) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "flow" and run.data.tags["kind"] == "batch"
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.params == {
        "model.d_model": "64",
        "model.n_heads": "4",
        "data.symbols": "['A', 'B']",
    }
    assert steps_and_values(client, run_id, "total_loss") == [
        (s, pytest.approx(1.0 / (s + 1))) for s in range(5)
    ]
    assert [s for s, _ in steps_and_values(client, run_id, "action_accuracy")] == [0, 1, 2, 3, 4]
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "checkpoints", "best"} <= top
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/step-000004.pt"
    ]

    mv = client.get_model_version_by_alias(f"{experiment}-model", "best")
    assert str(mv.version) == version == "1"  # sqlite gives int, REST str
    assert mv.run_id == run_id
    assert mv.tags["checkpoint"] == "step-000004.pt"
    # The version's source is a folder inside the run's artifacts holding that checkpoint.
    prefix = run.info.artifact_uri.rstrip("/") + "/"
    assert mv.source.startswith(prefix), (mv.source, prefix)
    folder = mv.source[len(prefix) :]
    local = client.download_artifacts(run_id, folder, str(tmp_path / "download"))
    assert (Path(local) / "step-000004.pt").read_bytes() == b"weights-v1"


def test_training_flow_is_visible_in_sqlite_store(sqlite_uri: str, tmp_path: Path) -> None:
    run_id, version = run_training_flow(sqlite_uri, "flow", tmp_path)
    check_training_flow(client_for(sqlite_uri), "flow", run_id, version, tmp_path)


def test_sqlite_folder_is_created_and_artifacts_sit_beside_the_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "home" / "nested" / "mlflow.db"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with Tracker(f"sqlite:///{db}", "beside") as t:
        t.log_artifact(write_checkpoint(tmp_path / "c.pt", b"x"))
    assert db.is_file()
    assert t.artifact_uri.startswith((db.parent / "artifacts").as_uri() + "/")
    assert (db.parent / "artifacts" / t.run_id / "artifacts" / "c.pt").is_file()
    assert list(cwd.iterdir()) == []  # no ./mlruns or ./mlartifacts in the process's cwd


def test_metrics_are_written_every_log_every_steps_calls(sqlite_uri: str) -> None:
    client = client_for(sqlite_uri)
    t = Tracker(sqlite_uri, "buffered", log_every_steps=3)
    t.log_metrics({"loss": 1.0}, step=0)
    t.log_metrics({"loss": 0.9}, step=1)
    assert client.get_metric_history(t.run_id, "loss") == []
    t.log_metrics({"loss": 0.8}, step=2)
    assert [s for s, _ in steps_and_values(client, t.run_id, "loss")] == [0, 1, 2]
    t.log_metrics({"loss": 0.7}, step=3)
    t.close()  # flushes the rest
    assert steps_and_values(client, t.run_id, "loss")[-1] == (3, pytest.approx(0.7))
    assert client.get_run(t.run_id).info.status == "FINISHED"


def test_non_finite_metrics_are_skipped_with_a_warning(
    sqlite_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(sqlite_uri)
    with (
        caplog.at_level(logging.WARNING, logger="pipelines.tracking.tracker"),
        Tracker(sqlite_uri, "nonfinite") as t,
    ):
        t.log_metrics({"loss": float("nan"), "acc": 0.5}, step=0)
        t.log_metrics({"loss": float("inf"), "acc": 0.6}, step=1)
        t.log_metrics({"loss": 0.3, "acc": 0.7}, step=2)
    assert steps_and_values(client, t.run_id, "loss") == [(2, pytest.approx(0.3))]
    assert [s for s, _ in steps_and_values(client, t.run_id, "acc")] == [0, 1, 2]
    assert any("'loss' is nan" in r.getMessage() for r in caplog.records)


def test_resume_by_run_id_appends_to_the_same_run(
    sqlite_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(sqlite_uri)
    with Tracker(sqlite_uri, "resume") as first:
        first.log_params({"train": {"lr": 0.001, "epochs": 4}})
        for step in range(3):
            first.log_metrics({"loss": 1.0 - step / 10}, step)
    assert client.get_run(first.run_id).info.status == "FINISHED"

    with caplog.at_level(logging.WARNING, logger="pipelines.tracking.tracker"):
        second = Tracker(sqlite_uri, "resume", run_id=first.run_id)
        assert second.run_id == first.run_id
        assert client.get_run(first.run_id).info.status == "RUNNING"
        # The same config again is fine; a changed value is kept as it was, with a warning.
        second.log_params({"train": {"lr": 0.001, "epochs": 8, "batch_size": 64}})
        for step in range(3, 5):
            second.log_metrics({"loss": 1.0 - step / 10}, step)
        second.close()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "4", "train.batch_size": "64"}
    assert [s for s, _ in steps_and_values(client, first.run_id, "loss")] == [0, 1, 2, 3, 4]
    assert any("'train.epochs'" in r.getMessage() for r in caplog.records)
    assert len(client.search_runs([first.experiment_id])) == 1


def test_resume_of_an_unknown_run_id_starts_a_new_run(sqlite_uri: str) -> None:
    with Tracker(sqlite_uri, "unknown-resume", run_id="0" * 32) as t:
        assert t.run_id != "0" * 32
    assert client_for(sqlite_uri).get_run(t.run_id).info.status == "FINISHED"


def test_many_and_long_params_are_chunked_and_cut(sqlite_uri: str) -> None:
    params: dict[str, object] = {f"p{i:03d}": i for i in range(250)}
    params["long"] = "x" * 7000
    with Tracker(sqlite_uri, "params") as t:
        t.log_params(params)
    logged = client_for(sqlite_uri).get_run(t.run_id).data.params
    assert len(logged) == 251 and logged["p249"] == "249"
    assert len(logged["long"]) == 6000 and logged["long"].endswith("...")


def test_each_registered_version_keeps_its_own_checkpoint(sqlite_uri: str, tmp_path: Path) -> None:
    client = client_for(sqlite_uri)
    with Tracker(sqlite_uri, "versions") as t:
        v1 = t.register_model_version(
            "versions-model", write_checkpoint(tmp_path / "best.pt", b"1")
        )
        v2 = t.register_model_version(
            "versions-model", write_checkpoint(tmp_path / "best.pt", b"2")
        )
    assert (v1, v2) == ("1", "2")
    assert str(client.get_model_version_by_alias("versions-model", "best").version) == "2"
    prefix = t.artifact_uri.rstrip("/") + "/"
    for version, payload in ((v1, b"1"), (v2, b"2")):
        source = client.get_model_version("versions-model", version).source
        assert source.startswith(prefix), (source, prefix)
        folder = source[len(prefix) :]
        local = client.download_artifacts(t.run_id, folder, str(tmp_path / f"dl{version}"))
        assert (Path(local) / "best.pt").read_bytes() == payload


def test_closed_port_raises_tracking_error_naming_the_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=re.escape(uri)) as info:
        Tracker(uri, "unreachable")
    assert "tracking.uri" in str(info.value)


def test_password_in_uri_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    with pytest.raises(TrackingError) as info:
        Tracker(f"http://me:s3cret@127.0.0.1:{port}", "unreachable")
    assert f"http://me:***@127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_missing_artifact_file_is_a_tracking_error(sqlite_uri: str, tmp_path: Path) -> None:
    with Tracker(sqlite_uri, "missing") as t, pytest.raises(TrackingError, match="no such file"):
        t.log_artifact(str(tmp_path / "nope.pt"))


def test_log_every_steps_below_one_is_refused(sqlite_uri: str) -> None:
    with pytest.raises(ConfigError, match="log_every_steps"):
        Tracker(sqlite_uri, "refused", log_every_steps=0)


def test_error_inside_with_block_marks_the_run_failed(sqlite_uri: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), Tracker(sqlite_uri, "failed") as t:
        raise RuntimeError("boom")
    assert client_for(sqlite_uri).get_run(t.run_id).info.status == "FAILED"


class FlakyClient:
    """A real client whose ``log_batch`` first raises the given errors, one per call."""

    def __init__(self, uri: str, errors: list[Exception]) -> None:
        self._client = client_for(uri)
        self.errors = errors
        self.log_batch_calls = 0

    def log_batch(self, *args: object, **kwargs: object) -> None:
        self.log_batch_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self._client.log_batch(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def test_locked_sqlite_is_retried(sqlite_uri: str) -> None:
    locked = MlflowException(
        "(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE
    )
    flaky = FlakyClient(sqlite_uri, [locked])
    with Tracker(sqlite_uri, "locked", client=flaky) as t:  # type: ignore[arg-type]
        t.log_metrics({"loss": 0.5}, step=0)
        t.flush()
    assert flaky.log_batch_calls == 2
    assert steps_and_values(client_for(sqlite_uri), t.run_id, "loss") == [(0, 0.5)]


def test_metrics_survive_a_temporary_outage_but_not_a_refusal(sqlite_uri: str) -> None:
    down = MlflowException("API request failed: connection refused", error_code=INTERNAL_ERROR)
    refused = MlflowException("Invalid metric name", error_code=INVALID_PARAMETER_VALUE)
    flaky = FlakyClient(sqlite_uri, [down])
    client = client_for(sqlite_uri)
    t = Tracker(sqlite_uri, "outage", client=flaky)  # type: ignore[arg-type]
    t.log_metrics({"loss": 0.5}, step=0)
    with pytest.raises(TrackingError, match="log metrics"):
        t.flush()
    t.log_metrics({"loss": 0.4}, step=1)
    t.flush()
    assert [s for s, _ in steps_and_values(client, t.run_id, "loss")] == [0, 1]

    flaky.errors.append(refused)
    t.log_metrics({"loss": 0.3}, step=2)
    with pytest.raises(TrackingError, match="Invalid metric name"):
        t.flush()
    t.log_metrics({"loss": 0.2}, step=3)
    t.close()
    assert [s for s, _ in steps_and_values(client, t.run_id, "loss")] == [0, 1, 3]


_OPEN_AT_GO = """
import os, sys, time
from pathlib import Path
from pipelines.tracking.tracker import Tracker
uri, folder = sys.argv[1], Path(sys.argv[2])
(folder / f"ready-{os.getpid()}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
print(Tracker(uri, "together").run_id)
"""


@pytest.mark.slow
def test_processes_opening_one_fresh_sqlite_store_together(tmp_path: Path) -> None:
    """Serve and the ModelActor may both open a new home's store at once; neither may fail.

    Without a lock around store creation, 2 or 3 of 3 such processes die in MLflow's migrations.
    """
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AT_GO, uri, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()  # all have imported mlflow: release them together
    results = [p.communicate(timeout=120) for p in procs]
    failed = [err[-2000:] for p, (_, err) in zip(procs, results, strict=True) if p.returncode]
    assert not failed, failed[0]
    assert len({out.strip() for out, _ in results}) == 3


# -- a real tracking server ---------------------------------------------------------------------


@pytest.mark.slow
def test_training_flow_is_visible_on_a_tracking_server(server_uri: str, tmp_path: Path) -> None:
    run_id, version = run_training_flow(server_uri, "flow", tmp_path)
    client = client_for(server_uri)
    check_training_flow(client, "flow", run_id, version, tmp_path)
    # Artifacts are proxied: the run's root is mlflow-artifacts:/, not a path on this machine.
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")


@pytest.mark.slow
def test_resume_on_a_tracking_server(server_uri: str) -> None:
    with Tracker(server_uri, "resume") as first:
        first.log_params({"lr": 0.001})
        first.log_metrics({"loss": 1.0}, step=0)
    with Tracker(server_uri, "resume", run_id=first.run_id) as second:
        second.log_params({"lr": 0.001})
        second.log_metrics({"loss": 0.5}, step=1)
    assert second.run_id == first.run_id
    client = client_for(server_uri)
    assert steps_and_values(client, first.run_id, "loss") == [(0, 1.0), (1, 0.5)]
