"""The writer of a session host's MLflow runs (``actors.hosts.tracking``), and its carriers.

``RunsWriter`` applies the host's batches to one ``Tracker`` per session. In a host it runs
in a Ray actor of its own (``RayRunsSink``: 0 CPUs, low OS priority, named
``<host name>-mlflow`` and owned by the host), so MLflow's Python never takes the host's GIL;
``LocalRunsSink`` runs it in the caller's thread (no Ray; tests).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from actors.hosts.tracking import SESSION_TAG, Batch, Row
from pipelines.tracking.store import fail_fast_over_http

log = logging.getLogger(__name__)

_NEVER = 1 << 30  # a Tracker's log_every_steps: it writes only when the writer flushes it


class RunsWriter:
    """Applies batches to one ``Tracker`` per session; counts failures, never raises.

    ``factory(run_name, run_id)`` -> a Tracker (the real one by default; tests pass a fake).
    """

    def __init__(self, uri: str, experiment: str, factory: Callable[..., Any] | None = None):
        self.uri, self.experiment = uri, experiment
        self._factory = factory or self._tracker_factory
        self._trackers: dict[str, Any] = {}

    def _tracker_factory(self, run_name: str, run_id: str | None) -> Any:
        from pipelines.tracking.tracker import Tracker

        return Tracker(
            self.uri,
            self.experiment,
            run_name=run_name,
            run_id=run_id,
            tags={SESSION_TAG: run_name},
            log_every_steps=_NEVER,
        )

    def write(self, batch: Batch) -> dict[str, Any]:
        """Log ``batch``; answers the run ids opened by it, its failures and the last error."""
        out: dict[str, Any] = {"run_ids": {}, "errors": 0, "last_error": "", "lost": 0}

        def failed(what: str, sid: str, exc: Exception) -> None:
            out["errors"] += 1
            out["last_error"] = f"{what} {sid}: {exc}"
            log.warning("live MLflow %s for %s failed: %s", what, sid, exc)

        by_session: dict[str, list[Row]] = collections.defaultdict(list)
        for row in batch.rows:
            by_session[row[0]].append(row)
        for sid in dict.fromkeys([*by_session, *(s for s, _ in batch.ends)]):
            t = self._trackers.get(sid)
            if t is None:
                try:
                    t = self._trackers[sid] = self._factory(sid, batch.runs.get(sid))
                except Exception as exc:  # the store is down: these rows are lost, counted
                    failed("open run", sid, exc)
                    out["lost"] += len(by_session.get(sid, ()))
                    continue
                out["run_ids"][sid] = t.run_id
            try:
                for _, step, metrics in by_session.get(sid, ()):
                    t.log_metrics(metrics, step)
                t.flush()  # one log_batch for this run (a failed one stays buffered in it)
            except Exception as exc:
                failed("log", sid, exc)
        for sid, status in batch.ends:
            t = self._trackers.pop(sid, None)
            try:
                if t is not None:
                    t.close(status)
            except Exception as exc:
                failed("end", sid, exc)
        return out


class _RunsActor:
    """The Ray actor around ``RunsWriter``: a sync actor, so batches apply in order."""

    def __init__(self, uri: str, experiment: str) -> None:
        logging.basicConfig(level=logging.INFO)
        # a background writer: where it shares cores with the hosts, their predictions go first
        with contextlib.suppress(OSError):
            os.nice(10)
        fail_fast_over_http(uri)
        self.writer = RunsWriter(uri, experiment)

    def write(self, batch: Batch) -> dict[str, Any]:
        return self.writer.write(batch)


class LocalRunsSink:
    """Writes in the calling thread (the sender's): HostCore without Ray, and tests."""

    def __init__(self, writer: RunsWriter) -> None:
        self.writer = writer

    def submit(self, batch: Batch) -> Any:
        return self.writer.write(batch)

    def poll(self, handle: Any) -> tuple[str, Any] | None:
        return "done", handle


class RayRunsSink:
    """The writer as a Ray actor of 0 CPUs on this node (the sqlite file is a local path),
    named ``name`` and owned by the caller, so it ends with the host; a host that restarts
    finds it by name or starts a new one, and a writer that died is started again."""

    def __init__(self, uri: str, experiment: str, name: str, namespace: str) -> None:
        self.uri, self.experiment, self.name, self.namespace = uri, experiment, name, namespace
        self._actor: Any = None

    def _writer(self) -> Any:
        if self._actor is None:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            self._actor = (
                ray.remote(num_cpus=0, max_restarts=0)(_RunsActor)
                .options(
                    name=self.name,
                    namespace=self.namespace,
                    get_if_exists=True,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
                )
                .remote(self.uri, self.experiment)
            )
        return self._actor

    def submit(self, batch: Batch) -> Any:
        return self._writer().write.remote(batch)

    def poll(self, handle: Any) -> tuple[str, Any] | None:
        import ray

        ready, _ = ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return "done", ray.get(handle)
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayActorError):
                self._actor = None  # dead: the next batch goes to a new writer
            return "failed", exc
