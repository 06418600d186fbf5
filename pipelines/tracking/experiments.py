"""MLflow experiments and registered models: found or created, safe when processes race."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipelines.errors import TrackingError
from pipelines.tracking.store import _error_code, _redact, call_mlflow

# MLflow 3's UI opens an experiment without this tag as a GenAI experiment (traces, prompts);
# every experiment candleray writes holds training or backtest runs, so it says so.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_id_for(
    client: MlflowClient, uri: str, name: str, artifact_location: str | None
) -> str:
    """The id of experiment ``name``, created when missing; a deleted one is an error.

    Created with ``mlflow.experimentKind = custom_model_development``; an existing experiment
    without that tag gets it (one that names another kind keeps it: someone chose it).
    """
    experiment = call_mlflow(uri, "get experiment", lambda: client.get_experiment_by_name(name))
    if experiment is None:
        try:
            return call_mlflow(
                uri,
                "create experiment",
                lambda: client.create_experiment(
                    name,
                    artifact_location=artifact_location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                ),
            )
        except TrackingError as exc:  # another process created it first
            if _error_code(exc.__cause__) != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = call_mlflow(
                uri, "get experiment", lambda: client.get_experiment_by_name(name)
            )
            assert experiment is not None, f"experiment {name!r} exists yet cannot be read"
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) at "
            f"{_redact(uri)} is deleted; restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or use another run.name"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        experiment_id = experiment.experiment_id
        call_mlflow(
            uri,
            "tag experiment",
            lambda: client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND),
        )
    return experiment.experiment_id


def ensure_registered_model(client: MlflowClient, uri: str, name: str) -> None:
    """Create registered model ``name`` unless it exists (another process may race us)."""
    try:
        call_mlflow(uri, "get registered model", lambda: client.get_registered_model(name))
        return
    except TrackingError as exc:
        if _error_code(exc.__cause__) != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        call_mlflow(uri, "create registered model", lambda: client.create_registered_model(name))
    except TrackingError as exc:  # another process registered it first
        if _error_code(exc.__cause__) != "RESOURCE_ALREADY_EXISTS":
            raise
