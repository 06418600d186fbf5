"""The sweep in MLflow: one parent run, one child run per trial (tag ``mlflow.parentRunId``).

Experiment ``<run.name>-sweep``. The driver writes every run (Tune's callbacks run there), so
a sweep is one MLflow writer whatever the number of trials, and each run goes through
``Tracker`` (the choke point where MLflow errors become ``TrackingError``).

A resumed sweep finds each trial's child run by its tags (``candleray.trial_id`` under the
parent) before creating one, so no trial ever gets a second child run, and params are only
added, never changed (``Tracker.log_params`` skips what the run holds).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from conf import Config, flatten, to_dict
from pipelines.tracking import Tracker, call_mlflow

log = logging.getLogger(__name__)

SWEEP_TAG = "candleray.sweep"  # the sweep id, on the parent and every child
TRIAL_TAG = "candleray.trial_id"  # Tune's trial id, on each child
STATUS_TAG = "candleray.trial_status"  # finished | stopped early | failed | interrupted
REASON_TAG = "candleray.stop_reason"
ERROR_TAG = "candleray.error"
BEST_TRIAL_TAG = "candleray.best_trial_id"
BEST_RUN_TAG = "candleray.best_child_run_id"
CHECKPOINT_TAG = "candleray.checkpoint_logged"
PARENT_TAG = "mlflow.parentRunId"


def sweep_params(cfg: Config, space: Any) -> dict[str, Any]:
    s = cfg.sweep
    return {
        **{f"space.{d.key}": d.describe() for d in space.dims},
        "scheduler": s.scheduler,
        "metric": s.metric,
        "mode": s.mode,
        "trials": s.trials,
        "trial_count": s.trials * space.grid_size(),
        "max_concurrent": s.max_concurrent,
        "grace_period": s.grace_period,
        "reduction_factor": s.reduction_factor,
        "epochs": cfg.train.epochs,
        "trial_num_cpus": s.trial_num_cpus,
        "trial_num_gpus": s.trial_num_gpus,
        "trial_resources": json.dumps(s.trial_resources),
    }


def experiment_name(cfg: Config) -> str:
    return f"{cfg.run.name}-sweep"


def model_name(cfg: Config) -> str:
    return cfg.sweep.model_name or f"{cfg.run.name}-sweep"


class SweepRuns:
    """The parent run of one sweep and the child runs of its trials."""

    def __init__(self, cfg: Config, sweep_id: str, parent_run_id: str | None = None) -> None:
        assert cfg.tracking.uri is not None
        self.cfg = cfg
        self.uri = cfg.tracking.uri
        self.experiment = experiment_name(cfg)
        self.sweep_id = sweep_id
        self.parent = Tracker(
            self.uri,
            self.experiment,
            run_name=sweep_id,
            run_id=parent_run_id,
            tags={SWEEP_TAG: sweep_id, "candleray.kind": "sweep"},
            log_every_steps=1_000_000,  # flushed explicitly
        )
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.children: dict[str, Tracker] = {}

    @property
    def parent_run_id(self) -> str:
        return self.parent.run_id

    def log_sweep(self, params: dict[str, Any], base: Config, space: dict[str, Any]) -> None:
        self.parent.log_params(params)
        self.parent.log_dict(space, "sweep/space.yaml")
        self.parent.log_dict(to_dict(base), "sweep/base_config.yaml")

    def find_child(self, trial_id: str) -> Any | None:
        exp = self.parent.experiment_id
        query = (
            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
        )
        found = call_mlflow(
            self.uri,
            "search runs",
            lambda: self.client.search_runs([exp], query, max_results=2),
        )
        if len(found) > 1:
            log.warning("trial %s has %d child runs; using the first", trial_id, len(found))
        return found[0] if found else None

    def child(self, trial_id: str, name: str, cfg: Config) -> Tracker:
        """The open child run of ``trial_id``: found (a resumed sweep) or created."""
        if trial_id in self.children:
            return self.children[trial_id]
        existing = self.find_child(trial_id)
        tracker = Tracker(
            self.uri,
            self.experiment,
            run_name=name,
            run_id=existing.info.run_id if existing else None,
            tags={PARENT_TAG: self.parent_run_id, SWEEP_TAG: self.sweep_id, TRIAL_TAG: trial_id},
            log_every_steps=1_000_000,
        )
        tracker.log_params(flatten(to_dict(cfg)))  # already-held ones are skipped, none changed
        self.children[trial_id] = tracker
        return tracker

    def log_epoch(self, trial_id: str, metrics: dict[str, float], epoch: int) -> None:
        tracker = self.children.get(trial_id)
        if tracker is None:
            return
        tracker.log_metrics(metrics, step=epoch)
        tracker.flush()

    def end_child(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        tracker = self.children.pop(trial_id, None)
        if tracker is not None:
            run_id = tracker.run_id
        else:
            found = self.find_child(trial_id)
            if found is None:
                return
            run_id = str(found.info.run_id)
        self.set_tags(run_id, tags)
        if tracker is not None:
            tracker.close(status)
        else:
            call_mlflow(
                self.uri, "end run", lambda: self.client.set_terminated(run_id, status=status)
            )

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        if batch:  # one write for all: the driver writes every run of the sweep
            call_mlflow(self.uri, "set tags", lambda: self.client.log_batch(run_id, tags=batch))

    def log_checkpoint(self, run_id: str, folder: str) -> None:
        """The trial's best checkpoint as artifact ``checkpoint/`` of its child run (once)."""
        run = call_mlflow(self.uri, "get run", lambda: self.client.get_run(run_id))
        if run.data.tags.get(CHECKPOINT_TAG):
            return
        call_mlflow(
            self.uri,
            "log artifacts",
            lambda: self.client.log_artifacts(run_id, folder, "checkpoint"),
        )
        self.set_tags(run_id, {CHECKPOINT_TAG: "true"})

    def register_best(self, run_id: str, folder: str) -> str:
        """Register ``folder`` (the winner's best checkpoint) with alias ``best``."""
        status = self._ended_status(run_id)
        tracker = Tracker(self.uri, self.experiment, run_id=run_id, log_every_steps=1_000_000)
        try:
            return tracker.register_model_version(model_name(self.cfg), folder, alias="best")
        finally:
            tracker.close(status)  # reopened as RUNNING to upload; ended again as it was

    def _ended_status(self, run_id: str) -> str:
        tags = call_mlflow(self.uri, "get run", lambda: self.client.get_run(run_id)).data.tags
        return {"stopped early": "KILLED", "failed": "FAILED"}.get(
            tags.get(STATUS_TAG, ""), "FINISHED"
        )

    def child_runs(self) -> list[Any]:
        exp = self.parent.experiment_id
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        return call_mlflow(self.uri, "search runs", lambda: self.client.search_runs([exp], query))

    def finish(self, status: str, table: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """End every child still open (interrupted: KILLED), then the parent."""
        for trial_id in list(self.children):
            self.end_child(
                trial_id,
                "KILLED",
                {STATUS_TAG: "interrupted", REASON_TAG: "the sweep was stopped; --resume goes on"},
            )
        self.parent.log_dict({"trials": table}, "sweep/results.json")
        self.set_tags(self.parent_run_id, tags)
        self.parent.close(status)
