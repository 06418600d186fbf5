"""The JobBoard: long jobs (batch training, backtests) as Ray tasks, tracked by id.

The Serve ingress answers a job request at once with an id; the work runs in a Ray task
(``run_job``) that reports progress to the board and ends with a result or an error. The
board is a named actor, so any ingress replica (or a restarted one) finds the same jobs, and
it notices a task whose worker died (its error says so) instead of showing it running forever.
"""

from __future__ import annotations

import time
import traceback
import uuid
from typing import Any

import ray

from conf import Config
from pipelines.errors import InvalidInputError

KINDS: tuple[str, ...] = ("training", "backtest")


@ray.remote(num_cpus=0)
class JobBoard:
    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        self._refs: dict[str, list[ray.ObjectRef]] = {}  # in a list: the ref itself, not its value

    def create(self, kind: str, params: dict[str, Any]) -> str:
        job_id = f"{kind}-{uuid.uuid4().hex[:8]}"
        self._jobs[job_id] = {
            "id": job_id,
            "kind": kind,
            "params": params,
            "state": "running",
            "progress": {"done": 0, "total": 0},
            "created": time.time(),
            "finished": None,
            "result": None,
            "error": None,
        }
        return job_id

    def watch(self, job_id: str, refs: list[ray.ObjectRef]) -> None:
        self._refs[job_id] = refs

    def progress(self, job_id: str, done: int, total: int) -> None:
        self._jobs[job_id]["progress"] = {"done": int(done), "total": int(total)}

    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> None:
        job = self._jobs[job_id]
        job.update(state="failed" if error else "done", result=result, error=error)
        job["finished"] = time.time()

    def _check(self, job_id: str) -> None:
        job = self._jobs[job_id]
        refs = self._refs.get(job_id)
        if job["state"] != "running" or not refs:
            return
        ready, _ = ray.wait(refs, timeout=0)
        if ready:
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the worker died before reporting
                self.finish(job_id, error=f"the job's Ray task failed: {exc}")

    def get(self, job_id: str) -> dict[str, Any] | None:
        if job_id not in self._jobs:
            return None
        self._check(job_id)
        return self._jobs[job_id]

    def list(self) -> list[dict[str, Any]]:
        for job_id in self._jobs:
            self._check(job_id)
        return [{k: v for k, v in j.items() if k != "result"} for j in self._jobs.values()]


@ray.remote(num_cpus=0.25, max_retries=0)
def run_job(board: Any, job_id: str, kind: str, params: dict[str, Any], cfg: Config) -> None:
    """Run one job to its end; every outcome, error included, is written to the board."""
    from pipelines.errors import CandlerayError
    from pipelines.jobs.runs import backtest_job, training_job

    def report(done: int, total: int) -> None:
        board.progress.remote(job_id, done, total)

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
    ).remote()


def start_job(board: Any, cfg: Config, kind: str, params: dict[str, Any]) -> str:
    """Create the job on ``board`` and launch its task; returns the job id at once."""
    if kind not in KINDS:
        raise InvalidInputError(f"job kind {kind!r} is not one of {list(KINDS)}")
    job_id = ray.get(board.create.remote(kind, params))
    ref = run_job.remote(board, job_id, kind, params, cfg)
    board.watch.remote(job_id, [ref])
    return job_id
