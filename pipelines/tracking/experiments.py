"""MLflow experiments and registered models: found or created, safe when processes race."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from mlflow.tracking import MlflowClient

from pipelines.errors import TrackingError
from pipelines.tracking.store import _error_code, _redact, call_mlflow

# Every experiment candleray writes holds training or backtest runs, and says so for MLflow
# clients that read this tag; MLflow 3.17's UI does not go by it (see RUNS_VIEW below).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow 3.17's UI keeps a workflow type per browser (GenAI for a new user) and takes an
# experiment's kind from it, not from the tag above; only this URL parameter opens the
# model-training view. Runs tab route as the UI's bundle builds it (a hash router):
# `/experiments/:experimentId/:tabName` with tabName "runs".
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
EXPERIMENTS_VIEW = "#/experiments?workflowType=machine_learning"
# where `make mlflow-ui` serves the embedded store (a file or database store has no UI of its own)
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI a link opens: ``ui_url`` if set, else a tracking server itself, else the
    local UI of ``make mlflow-ui``. Credentials never go into a printed link."""
    base = ui_url or (
        tracking_uri if urlsplit(tracking_uri).scheme in ("http", "https") else LOCAL_UI
    )
    parts = urlsplit(base)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment="")).rstrip("/")


def runs_view_url(base: str, experiment_id: str) -> str:
    """The link that opens experiment ``experiment_id``'s runs table in the model-training view."""
    return f"{base}/{RUNS_VIEW.format(experiment_id=experiment_id)}"


def ui_hint(tracking_uri: str, ui_url: str | None = None) -> str:
    """How to start the UI a link opens, when nothing serves it yet (a file or database store)."""
    if ui_url or urlsplit(tracking_uri).scheme in ("http", "https"):
        return ""
    return (
        f"  (start it: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000)"
    )


def experiment_links(tracking_uri: str, ui_url: str | None = None) -> list[tuple[str, str]]:
    """(name, runs-view link) of every active experiment in the store, oldest first."""
    client = MlflowClient(tracking_uri)
    found = call_mlflow(tracking_uri, "search experiments", lambda: client.search_experiments())
    base = ui_base(tracking_uri, ui_url)
    rows = sorted(found, key=lambda e: e.creation_time or 0)
    return [(e.name, runs_view_url(base, e.experiment_id)) for e in rows if e.name != "Default"]


def link_lines(tracking_uri: str, ui_url: str | None = None) -> list[str]:
    """What ``make mlflow-ui`` prints before it starts the UI: one runs link per experiment.

    The experiments list alone is not enough: an experiment clicked there opens as GenAI for
    a new user (the URL parameter is not carried over), until the sidebar's "Model training"
    switch is chosen once.
    """
    base = ui_base(tracking_uri, ui_url)
    lines = ["MLflow UI, the model-training runs of each experiment:"]
    links = experiment_links(tracking_uri, ui_url)
    lines += [f"  {name}: {link}" for name, link in links]
    if not links:
        lines.append("  (no experiment yet: make demo or candleray train writes one)")
    lines.append(
        f"  all experiments: {base}/{EXPERIMENTS_VIEW} (choose 'Model training' in the "
        "sidebar once, or one opened from the list shows GenAI views)"
    )
    return lines


def experiment_link(tracking_uri: str, ui_url: str | None, name: str) -> str | None:
    """The runs-view link of experiment ``name``, or None when the store has no such experiment
    (nothing was written yet). Reads only: it never creates the experiment."""
    client = MlflowClient(tracking_uri)
    experiment = call_mlflow(
        tracking_uri, "get experiment", lambda: client.get_experiment_by_name(name)
    )
    if experiment is None:
        return None
    return runs_view_url(ui_base(tracking_uri, ui_url), experiment.experiment_id)


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
