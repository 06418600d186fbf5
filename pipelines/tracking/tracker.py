"""MLflow tracking of one training run, written through an explicit ``MlflowClient``.

The ModelActor is the one MLflow writer for training runs and owns one ``Tracker``.
Nothing here touches MLflow's fluent API (``mlflow.start_run``, ``set_tracking_uri``):
those keep process-global state, and several drivers, actors and servers share a machine.

Every MLflow call goes through ``Tracker._call``, the one place where MLflow, HTTP,
SQLAlchemy and file-system errors become ``TrackingError`` (naming the URI, the
operation and a fix) and where sqlite's "database is locked" is retried briefly.
A ``Tracker`` is not thread-safe; the sync actor calls it one method at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from conf import flatten
from pipelines.errors import ConfigError, TrackingError
from pipelines.tracking import lineage
from pipelines.tracking.experiments import ensure_registered_model, experiment_id_for
from pipelines.tracking.store import (
    _chunks,
    _cut,
    _init_lock,
    _is_transient,
    _param_text,
    _redact,
    _sqlite_path,
    call_mlflow,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's batch limits (mlflow.utils.validation): 100 params or tags, 1000 metrics per log_batch.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# Param values: 6000 characters since MLflow 2.x; older servers still say 500, so a batch they
# refuse for length is sent again cut to 500.
_PARAM_VALUE_LIMIT = 6000
_OLD_PARAM_VALUE_LIMIT = 500
# Metrics kept while the store is unreachable; past this the oldest are dropped.
_MAX_PENDING_METRICS = 100_000
_END_STATUSES = ("FINISHED", "FAILED", "KILLED")


class Tracker:
    """One MLflow run: params, metrics by step, artifacts and registered model versions.

    ``uri`` is both the tracking and the registry URI (``sqlite:///…`` or ``http://host:port``).
    With ``run_id`` of an existing run the run is resumed (set RUNNING again); otherwise a new
    run is created in ``experiment`` (created when missing). Metrics are buffered and written
    with one ``log_batch`` every ``log_every_steps`` calls to ``log_metrics``, or on ``flush``.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        log_every_steps: int = 10,
        client: MlflowClient | None = None,
    ) -> None:
        if log_every_steps < 1:
            raise ConfigError(
                f"tracking.log_every_steps must be >= 1, got {log_every_steps}; "
                "set it to how many log_metrics calls go into one MLflow write (e.g. 10)"
            )
        self._uri = uri
        self._shown_uri = _redact(uri)
        self._log_every = log_every_steps
        self._pending: list[Metric] = []
        self._calls_since_flush = 0
        self._params: dict[str, str] = {}  # what the run holds, so re-logging can be checked
        self._warned_nonfinite: set[str] = set()
        self._closed = False

        db_path = self._call("prepare the sqlite store", lambda: _sqlite_path(uri))
        artifact_location = (db_path.parent / "artifacts").as_uri() if db_path else None
        if client is None:
            # Opening a store creates or migrates its tables; two processes doing that at once
            # on one fresh sqlite file break each other's migrations, so they take turns.
            with _init_lock(db_path):
                client = self._call(
                    "connect", lambda: MlflowClient(tracking_uri=uri, registry_uri=uri)
                )
        self._client = client
        experiment_id = experiment_id_for(self._client, uri, experiment, artifact_location)
        run = self._resume(run_id, experiment_id, tags) if run_id else None
        if run is None:
            run = self._call(
                "create run",
                lambda: self._client.create_run(experiment_id, run_name=run_name, tags=tags or {}),
            )
            logger.info(
                "MLflow run %s started in experiment %r at %s",
                run.info.run_id,
                experiment,
                self._shown_uri,
            )
        self._run_id: str = run.info.run_id
        self._experiment_id: str = run.info.experiment_id
        self._artifact_uri: str = run.info.artifact_uri

    # -- identity -----------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def experiment_id(self) -> str:
        return self._experiment_id

    @property
    def artifact_uri(self) -> str:
        """Root of this run's artifacts (``file://…`` for sqlite, ``mlflow-artifacts:/…`` proxied)."""
        return self._artifact_uri

    # -- params and metrics -------------------------------------------------------------------

    def log_params(self, params: dict[str, object]) -> None:
        """Log ``params`` (nested dicts flattened to dotted keys, values as text).

        A key the run already holds with the same value is skipped; one with a different value
        is skipped with a warning, since MLflow refuses to change a param (e.g. on resume).
        """
        new: list[Param] = []
        for key, value in flatten(params).items():
            text = _param_text(key, value, _PARAM_VALUE_LIMIT)
            old = self._params.get(key)
            if old is None:
                new.append(Param(key, text))
            elif old not in (text, _cut(text, _OLD_PARAM_VALUE_LIMIT)):
                logger.warning(
                    "MLflow param %r of run %s stays %r; the new value %r is not logged "
                    "(MLflow params cannot change; start a new run to record it)",
                    key,
                    self._run_id,
                    _cut(old, 80),
                    _cut(text, 80),
                )
        for chunk in _chunks(new, _PARAMS_PER_BATCH):
            self._log_param_batch(chunk)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer ``metrics`` at ``step``; NaN and inf are skipped with a warning."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"metric {key!r} must be a number, got {type(value).__name__} {value!r}"
                ) from exc
            if not math.isfinite(number):
                # Once per key at warning level: a diverged run would log this every step.
                level = logging.DEBUG if key in self._warned_nonfinite else logging.WARNING
                logger.log(
                    level, "metric %r is %s at step %d; not logged to MLflow", key, number, step
                )
                self._warned_nonfinite.add(key)
                continue
            self._pending.append(Metric(key, number, timestamp, int(step)))
        if len(self._pending) > _MAX_PENDING_METRICS:
            dropped = len(self._pending) - _MAX_PENDING_METRICS
            del self._pending[:dropped]
            logger.warning(
                "MLflow at %s unreachable for long; dropped the %d oldest metrics",
                self._shown_uri,
                dropped,
            )
        self._calls_since_flush += 1
        if self._calls_since_flush >= self._log_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics now.

        On a failure that may pass (server down, store busy) the metrics stay buffered for the
        next flush; on one that never will (a refused key or value) they are dropped.
        """
        self._calls_since_flush = 0
        while self._pending:
            chunk = self._pending[:_METRICS_PER_BATCH]

            def log_chunk(c: list[Metric] = chunk) -> None:
                self._client.log_batch(self._run_id, metrics=c)

            try:
                self._call("log metrics", log_chunk)
            except TrackingError as exc:
                if not _is_transient(exc.__cause__):
                    del self._pending[: len(chunk)]
                raise
            del self._pending[: len(chunk)]

    # -- artifacts and models -----------------------------------------------------------------

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Upload a file (or a folder's contents) under ``artifact_path`` of the run."""
        path = Path(local_path)
        if not path.exists():
            raise TrackingError(
                f"cannot log artifact {str(path)!r} to MLflow run {self._run_id}: no such file "
                "or folder; pass the path of a file that exists (e.g. a saved checkpoint)"
            )
        if path.is_dir():
            self._call(
                "log artifacts",
                lambda: self._client.log_artifacts(self._run_id, str(path), artifact_path),
            )
        else:
            self._call(
                "log artifact",
                lambda: self._client.log_artifact(self._run_id, str(path), artifact_path),
            )

    def log_dict(self, data: dict, artifact_file: str) -> None:
        """Write ``data`` as ``artifact_file``: YAML for ``.yaml``/``.yml``, JSON otherwise."""
        self._call("log dict", lambda: self._client.log_dict(self._run_id, data, artifact_file))

    def register_model_version(
        self,
        model_name: str,
        local_checkpoint: str,
        *,
        alias: str = "best",
        artifact_path: str = "best",
    ) -> str:
        """Upload ``local_checkpoint``, register it as a new version of ``model_name``, point
        ``alias`` at it and return the version number.

        Each version gets its own folder, ``<artifact_path>/<checkpoint stem>``, because a
        version's source is a folder and must not change when a later best is uploaded.
        """
        path = Path(local_checkpoint)
        folder = self._free_artifact_folder(
            artifact_path, path.stem if path.is_file() else path.name
        )
        self.log_artifact(str(path), folder)
        # The run's own artifact URI: on a server it is mlflow-artifacts:/…, which the server
        # accepts only inside the artifact root of the run named by run_id; on sqlite file://….
        source = f"{self._artifact_uri.rstrip('/')}/{folder}"
        ensure_registered_model(self._client, self._uri, model_name)
        version = self._call(
            "create model version",
            lambda: self._client.create_model_version(
                model_name, source, run_id=self._run_id, tags={"checkpoint": path.name}
            ),
        )
        self._call(
            "set model alias",
            lambda: self._client.set_registered_model_alias(model_name, alias, version.version),
        )
        logger.info(
            "registered %s version %s (@%s) from %s", model_name, version.version, alias, source
        )
        return str(version.version)

    # -- lineage ------------------------------------------------------------------------------

    def link_previous_run(
        self,
        previous_run_id: str | None,
        restored_from: int | None,
        previous_generation: str | None = None,
        reason: str = "restart",
    ) -> None:
        """Record that this run continues ``previous_run_id`` (``pipelines.tracking.lineage``)."""
        lineage.link_previous_run(
            self._client,
            self._uri,
            self._experiment_id,
            self._run_id,
            previous_run_id,
            restored_from,
            previous_generation,
            reason,
        )

    # -- end of run ---------------------------------------------------------------------------

    def set_terminated(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ended with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in _END_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {', '.join(_END_STATUSES)}")
        try:
            self.flush()
        finally:
            self._call("end run", lambda: self._client.set_terminated(self._run_id, status=status))
        self._closed = True

    def close(self, status: str = "FINISHED") -> None:
        """``set_terminated`` once; later calls do nothing."""
        if not self._closed:
            self.set_terminated(status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
            return
        try:
            self.close("FAILED")
        except TrackingError as close_exc:  # keep the original error, not MLflow's
            logger.warning("could not mark MLflow run %s FAILED: %s", self._run_id, close_exc)

    # -- internals ----------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run one MLflow operation: retry sqlite locks briefly, translate every failure."""
        return call_mlflow(self._uri, operation, fn)

    def _get_run(self, run_id: str) -> Run | None:
        return lineage.get_run(self._client, self._uri, run_id)

    def _resume(self, run_id: str, experiment_id: str, tags: dict[str, str] | None) -> Run | None:
        run = self._get_run(run_id)
        if run is None:
            logger.warning(
                "MLflow run %s not found at %s; starting a new run", run_id, self._shown_uri
            )
            return None
        if run.info.lifecycle_stage == "deleted":
            logger.warning("MLflow run %s is deleted; starting a new run", run_id)
            return None
        if run.info.experiment_id != experiment_id:
            logger.warning(
                "resuming MLflow run %s of experiment %s, not of experiment %s",
                run_id,
                run.info.experiment_id,
                experiment_id,
            )
        self._call("resume run", lambda: self._client.update_run(run_id, status="RUNNING"))
        if tags:
            run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
            self._call("set tags", lambda: self._client.log_batch(run_id, tags=run_tags))
        self._params = dict(run.data.params)
        logger.info("MLflow run %s resumed at %s", run_id, self._shown_uri)
        return run

    def _log_param_batch(self, batch: list[Param]) -> None:
        try:
            self._call("log params", lambda: self._client.log_batch(self._run_id, params=batch))
        except TrackingError as exc:
            if "exceeded length limit" not in str(exc.__cause__):
                raise
            logger.warning(
                "MLflow at %s refuses params over %d characters; cutting them",
                self._shown_uri,
                _OLD_PARAM_VALUE_LIMIT,
            )
            batch = [Param(p.key, _cut(p.value, _OLD_PARAM_VALUE_LIMIT)) for p in batch]
            self._call("log params", lambda: self._client.log_batch(self._run_id, params=batch))
        self._params.update((p.key, p.value) for p in batch)

    def _free_artifact_folder(self, artifact_path: str, name: str) -> str:
        taken = {
            Path(info.path).name
            for info in self._call(
                "list artifacts", lambda: self._client.list_artifacts(self._run_id, artifact_path)
            )
        }
        folder, n = name, 1
        while folder in taken:
            n += 1
            folder = f"{name}-{n}"
        return f"{artifact_path.strip('/')}/{folder}"
