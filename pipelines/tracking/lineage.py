"""Lineage of MLflow runs: one model's runs across ModelActor restarts and rewinds.

A restored or rewound model never logs into the run that already has its later steps; it
opens a new run, and ``link_previous_run`` ties the two together with tags (see there), so a
person can walk a model's history run by run and every run's step axis only moves forward.
"""

from __future__ import annotations

import contextlib

from mlflow.entities import Run, RunTag, ViewType
from mlflow.tracking import MlflowClient

from pipelines.errors import TrackingError
from pipelines.tracking.store import _error_code, call_mlflow

PREVIOUS_RUN_TAG = "candleray.previous_run"
RESTORED_FROM_TAG = "candleray.restored_from"
RESTARTS_TAG = "candleray.restarts"
CONTINUED_IN_TAG = "candleray.continued_in"
OPENED_AFTER_TAG = "candleray.opened_after"
GENERATION_TAG = "candleray.generation"


def get_run(client: MlflowClient, uri: str, run_id: str) -> Run | None:
    """The run, or None when the store has no run of that id."""
    try:
        return call_mlflow(uri, "get run", lambda: client.get_run(run_id))
    except TrackingError as exc:
        if _error_code(exc.__cause__) != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def link_previous_run(
    client: MlflowClient,
    uri: str,
    experiment_id: str,
    run_id: str,
    previous_run_id: str | None,
    restored_from: int | None,
    previous_generation: str | None = None,
    reason: str = "restart",
) -> None:
    """Record that run ``run_id`` continues ``previous_run_id`` from checkpoint step
    ``restored_from``.

    Without a run id (a checkpoint written before its run was open) the previous run is the
    one tagged ``candleray.generation = previous_generation`` in ``experiment_id``.

    This run gets ``candleray.previous_run``, ``candleray.restored_from``,
    ``candleray.opened_after`` (``reason``: restart, or rewind to an older checkpoint) and
    ``candleray.restarts`` (one more than the previous run's: restarts and rewinds both
    count, each opened a new run of the lineage). The previous run gets
    ``candleray.continued_in`` and, if still RUNNING (its actor died), ends KILLED. A
    previous run that is gone (deleted, or another store) is only named. Safe to repeat.
    """
    restarts = 1
    if previous_run_id:
        previous = get_run(client, uri, previous_run_id)
    else:
        previous = _run_of_generation(client, uri, experiment_id, previous_generation)
        previous_run_id = previous.info.run_id if previous is not None else None
    if previous is not None and previous.info.lifecycle_stage != "deleted":
        # restored from a checkpoint that an earlier restart restored too: continue the
        # newest run of the lineage, not the one that wrote the checkpoint
        previous = _newest_in_lineage(client, uri, previous, run_id)
        previous_run_id = previous.info.run_id
        with contextlib.suppress(ValueError):  # a hand-edited tag: count from 1
            restarts = int(previous.data.tags.get(RESTARTS_TAG, "0")) + 1
        old_id = previous.info.run_id
        link = [RunTag(CONTINUED_IN_TAG, run_id)]
        call_mlflow(uri, "tag previous run", lambda: client.log_batch(old_id, tags=link))
        if previous.info.status == "RUNNING":
            call_mlflow(
                uri,
                "end previous run",
                lambda: client.set_terminated(old_id, status="KILLED"),
            )
    tags = {RESTARTS_TAG: str(restarts), OPENED_AFTER_TAG: reason}
    if restored_from is not None:
        tags[RESTORED_FROM_TAG] = str(restored_from)
    if previous_run_id:
        tags[PREVIOUS_RUN_TAG] = previous_run_id
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    call_mlflow(uri, "tag run", lambda: client.log_batch(run_id, tags=run_tags))


def _newest_in_lineage(client: MlflowClient, uri: str, run: Run, this_run_id: str) -> Run:
    seen = {run.info.run_id, this_run_id}
    while (later_id := run.data.tags.get(CONTINUED_IN_TAG)) and later_id not in seen:
        later = get_run(client, uri, later_id)
        if later is None or later.info.lifecycle_stage == "deleted":
            break
        seen.add(later_id)
        run = later
    return run


def _run_of_generation(
    client: MlflowClient, uri: str, experiment_id: str, generation: str | None
) -> Run | None:
    if not generation or not generation.isalnum():  # a hex id; anything else finds nothing
        return None
    where = f"tags.`{GENERATION_TAG}` = '{generation}'"
    runs = call_mlflow(
        uri,
        "search runs",
        lambda: client.search_runs(
            [experiment_id], where, run_view_type=ViewType.ALL, max_results=1
        ),
    )
    return runs[0] if runs else None
