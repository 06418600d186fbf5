"""The JobBoard: long jobs (batch training, backtests) as Ray tasks, tracked by id.

The Serve ingress answers a job request at once with an id; the work runs in a Ray task
(``run_job``) that reports progress to the board and ends with a result or an error. The
board is a named actor, so any ingress replica (or a restarted one) finds the same jobs, and
it notices a task whose worker died (its error says so) instead of showing it running forever.

Its rules are a plain class, ``JobTable``: one training job at a time (two would interleave
their steps on the one ModelActor), at most ``serve.max_running_jobs`` running, a cancel that
the task sees at its next progress report, and at most ``serve.keep_finished_jobs`` finished
jobs kept with their results (the oldest go first).
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import ray

from conf import Config
from pipelines.errors import (
    CandlerayError,
    CapacityError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)

KINDS: tuple[str, ...] = ("training", "backtest")


class JobCancelled(CandlerayError):
    """Raised in a job's task at its next progress report after a cancel was asked."""


class JobTable:
    """The jobs and their rules (module doc); the JobBoard actor is a thin shell around it."""

    def __init__(
        self, max_running: int, keep_finished: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_running, self.keep_finished, self.clock = max_running, keep_finished, clock
        self._jobs: dict[str, dict[str, Any]] = {}  # in creation order

    def running(self) -> list[dict[str, Any]]:
        return [j for j in self._jobs.values() if j["state"] == "running"]

    def create(self, kind: str, params: dict[str, Any]) -> str:
        running = self.running()
        training = [j["id"] for j in running if j["kind"] == "training"]
        if kind == "training" and training:
            raise ConflictError(
                f"training job {training[0]} is running; one training job trains the model at a "
                "time (two would interleave their steps on the same ModelActor): wait for it "
                f"(GET /jobs/{training[0]}) or cancel it (POST /jobs/{training[0]}/cancel)"
            )
        if len(running) >= self.max_running:
            raise CapacityError(
                f"{len(running)} jobs are running, the limit (serve.max_running_jobs="
                f"{self.max_running}); wait for one to finish, cancel one (POST "
                "/jobs/{id}/cancel), or raise serve.max_running_jobs"
            )
        job_id = f"{kind}-{uuid.uuid4().hex[:8]}"
        self._jobs[job_id] = {
            "id": job_id,
            "kind": kind,
            "params": params,
            "state": "running",
            "cancel_requested": False,
            "progress": {"done": 0, "total": 0},
            "created": self.clock(),
            "finished": None,
            "result": None,
            "error": None,
        }
        return job_id

    def progress(self, job_id: str, done: int, total: int) -> bool:
        """Record progress; True when a cancel was asked: the task's signal to stop."""
        job = self._jobs.get(job_id)
        if job is None:  # dropped meanwhile (it cannot be: running jobs are kept)
            return True
        job["progress"] = {"done": int(done), "total": int(total)}
        return bool(job["cancel_requested"])

    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> None:
        job = self._jobs.get(job_id)
        if job is None or job["state"] != "running":
            return  # a late second report (the task's own after the board saw it die)
        if job["cancel_requested"]:
            state = "cancelled"
            error = "cancelled on request" + (f": {error}" if error else "")
        else:
            state = "failed" if error else "done"
        job.update(state=state, result=result, error=error, finished=self.clock())
        self._prune()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a running job to stop; it stays ``running`` (holding what it uses) until its
        task stops, then is ``cancelled``. NotFoundError / ConflictError otherwise."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}; GET /jobs lists them")
        if job["state"] != "running":
            raise ConflictError(
                f"job {job_id} is already {job['state']}; only a running job can be cancelled"
            )
        job["cancel_requested"] = True
        return self.summary(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        return [self.summary(j) for j in self._jobs.values()]

    @staticmethod
    def summary(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k != "result"}

    def _prune(self) -> None:
        """Drop the oldest finished jobs past ``keep_finished`` (a result can be megabytes)."""
        done = sorted(
            (j for j in self._jobs.values() if j["state"] != "running"),
            key=lambda j: j["finished"],
        )
        for job in done[: max(0, len(done) - self.keep_finished)]:
            del self._jobs[job["id"]]


@ray.remote(num_cpus=0)
class JobBoard:
    def __init__(self, max_running: int = 4, keep_finished: int = 100) -> None:
        self.table = JobTable(max_running, keep_finished)
        self._refs: dict[str, list[ray.ObjectRef]] = {}  # in a list: the ref itself, not its value

    def create(self, kind: str, params: dict[str, Any]) -> str:
        # a job whose worker died never calls finish: settle those first, or their slots
        # (one training job, serve.max_running_jobs) would refuse every new job until a GET
        for job in self.table.running():
            self._check(job["id"])
        return self.table.create(kind, params)

    def watch(self, job_id: str, refs: list[ray.ObjectRef]) -> None:
        self._refs[job_id] = refs

    def progress(self, job_id: str, done: int, total: int) -> bool:
        return self.table.progress(job_id, done, total)

    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> None:
        self.table.finish(job_id, result, error)
        self._forget_dropped()

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.table.cancel(job_id)
        if job["kind"] == "backtest":
            # its work is in symbol tasks that report only when each ends: cancel them (and
            # the job's task) now; training stops itself between calls (JobCancelled), so the
            # steps it applied are known and reported
            for ref in self._refs.get(job_id, []):
                ray.cancel(ref, recursive=True)
        return job

    def _forget_dropped(self) -> None:
        for job_id in [j for j in self._refs if self.table.get(j) is None]:
            del self._refs[job_id]

    def _check(self, job_id: str) -> None:
        job = self.table.get(job_id)
        refs = self._refs.get(job_id)
        if job is None or job["state"] != "running" or not refs:
            return
        ready, _ = ray.wait(refs, timeout=0)
        if ready:
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the worker died (or was cancelled)
                self.finish(job_id, error=f"the job's Ray task ended: {exc}")

    def get(self, job_id: str) -> dict[str, Any] | None:
        self._check(job_id)
        return self.table.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        for job in self.table.running():
            self._check(job["id"])
        return self.table.list()


@ray.remote(num_cpus=0.25, max_retries=0)
def run_job(board: Any, job_id: str, kind: str, params: dict[str, Any], cfg: Config) -> None:
    """Run one job to its end; every outcome, error included, is written to the board."""
    from pipelines.jobs.runs import backtest_job, training_job

    def report(done: int, total: int) -> None:
        # one round trip per report (a training call of train.batches_per_call batches, or a
        # symbol's backtest): the answer says whether a cancel was asked
        if ray.get(board.progress.remote(job_id, done, total)):
            raise JobCancelled(f"job {job_id} stopped at {done} of {total}, as asked")

    try:
        if kind == "training":
            result = training_job(cfg, params["kind"], params.get("epochs"), report)
        else:
            result = backtest_job(
                cfg,
                params["symbols"],
                params.get("since"),
                params.get("until"),
                params.get("checkpoint"),
                report,
            )
    except CandlerayError as exc:
        ray.get(board.finish.remote(job_id, error=str(exc)))
    except Exception as exc:  # a bug: the job fails with its trace, the board stays up
        ray.get(
            board.finish.remote(
                job_id, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            )
        )
    else:
        ray.get(board.finish.remote(job_id, result=result))


def job_board(cfg: Config) -> Any:
    """The model's JobBoard (named ``<run.name>-jobs``), created if missing.

    Keep the handle: a board that is not detached ends when the last handle of the process
    that created it goes (``candleray serve`` holds one for the app's lifetime).
    """
    # @ray.remote turns the class into an ActorClass; mypy keeps a decorated class's own type
    return JobBoard.options(  # type: ignore[attr-defined]
        name=f"{cfg.run.name}-jobs",
        namespace=cfg.ray.namespace,
        get_if_exists=True,
        lifetime="detached" if cfg.ray.detached else None,
    ).remote(cfg.serve.max_running_jobs, cfg.serve.keep_finished_jobs)


def _board_call(ref: Any) -> Any:
    """The board's answer; its refusal (ConflictError, ...) as itself, not Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CandlerayError):
            raise exc.cause from None
        raise


def start_job(board: Any, cfg: Config, kind: str, params: dict[str, Any]) -> str:
    """Create the job on ``board`` and launch its task; returns the job id at once.

    ConflictError (a training job runs already) or CapacityError (serve.max_running_jobs)
    before anything starts."""
    if kind not in KINDS:
        raise InvalidInputError(f"job kind {kind!r} is not one of {list(KINDS)}")
    job_id = _board_call(board.create.remote(kind, params))
    ref = run_job.remote(board, job_id, kind, params, cfg)
    board.watch.remote(job_id, [ref])
    return job_id
