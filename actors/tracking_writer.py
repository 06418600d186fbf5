"""The ModelActor's MLflow writer: one Tracker, fed in order, off the training thread.

Two carriers with one interface (``submit(method, *args, **kwargs)``, ``join()``):

* ``ProcessWriter`` — a small Ray actor owned by the ModelActor (0 CPUs). MLflow's Python
  (SQLAlchemy, HTTP) then runs in another process and never competes with training for
  the GIL; calls from one caller run in order. This is what the ModelActor uses.
* ``ThreadWriter`` — a thread in the same process, for ``ModelCore`` without Ray.

Either way the ModelActor stays the single writer of its training run: nothing else holds
the run's Tracker. A failing store is counted and reported, never allowed to stop training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from conf import Config, flatten, to_dict
from pipelines.errors import TrackingError
from pipelines.version import code_version

log = logging.getLogger(__name__)


def open_tracker(
    cfg: Config, run_id: str | None, generation: str, factory: Callable[..., Any] | None = None
) -> Any:
    """Resume ``run_id`` or create a run (logging the resolved config as params and YAML)."""
    if cfg.tracking.uri.startswith(("http://", "https://")):
        # in the writer's process: MLflow's defaults retry a dead server for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if factory is None:
        from pipelines.tracking.tracker import Tracker as factory  # noqa: N813 - a class used as a factory
    common = {"log_every_steps": cfg.tracking.log_every_steps}
    if run_id is not None:
        return factory(cfg.tracking.uri, cfg.run.name, run_id=run_id, **common)
    tracker = factory(
        cfg.tracking.uri,
        cfg.run.name,
        run_name=f"{cfg.run.name}-{generation}",
        tags={"candleray.code_version": code_version()},
        **common,
    )
    tracker.log_params(flatten(to_dict(cfg)))
    tracker.log_dict(to_dict(cfg), "config/resolved.yaml")
    return tracker


# methods that upload a file, and the position of its path among their arguments
_FILE_ARG = {"log_artifact": 0, "register_model_version": 1}


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """A local file for ``path``: itself, or a temporary copy of a remote URI (s3://, gs://, ...).

    Checkpoints on shared storage are uploaded to MLflow from a copy, named like the original.
    """
    if "://" not in path or path.startswith("file://"):
        yield path.removeprefix("file://")
        return
    with tempfile.TemporaryDirectory(prefix="candleray-upload-") as tmp:
        local = os.path.join(tmp, path.rstrip("/").rsplit("/", 1)[-1])
        with fsspec.open(path, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield local


class WriterCore:
    """Applies writer calls to a Tracker; counts failures instead of raising them."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.errors = 0
        self.last_error = ""

    def log_steps(self, batch: list[tuple[int, dict[str, float]]]) -> None:
        for step, m in batch:
            self.tracker.log_metrics(m, step)
        self.tracker.flush()

    def call(self, method: str, args: tuple, kwargs: dict) -> None:
        fn = self.log_steps if method == "log_steps" else getattr(self.tracker, method)
        try:
            if method in _FILE_ARG:
                i = _FILE_ARG[method]
                with _local_copy(args[i]) as local:
                    fn(*args[:i], local, *args[i + 1 :], **kwargs)
            else:
                fn(*args, **kwargs)
        except Exception as exc:  # a failing store must not stop training: count and report it
            self.errors += 1
            self.last_error = f"{method}: {exc}"
            log.warning("MLflow %s failed: %s", method, exc)

    def status(self) -> dict[str, Any]:
        return {"errors": self.errors, "last_error": self.last_error}


class ThreadWriter:
    def __init__(self, tracker: Any) -> None:
        self.run_id: str = tracker.run_id
        self._core = WriterCore(tracker)
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="mlflow-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            method, args, kwargs = self._q.get()
            try:
                self._core.call(method, args, kwargs)
            finally:
                self._q.task_done()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._q.put((method, args, kwargs))

    def join(self, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.time() + timeout_s
        while self._q.unfinished_tasks and time.time() < deadline:
            time.sleep(0.01)
        return self._core.status()


class _WriterActor:
    def __init__(self, cfg: Config, run_id: str | None, generation: str) -> None:
        logging.basicConfig(level=logging.INFO)
        self.core = WriterCore(open_tracker(cfg, run_id, generation))

    def run_id(self) -> str:
        return self.core.tracker.run_id

    def call(self, method: str, args: tuple, kwargs: dict) -> None:
        self.core.call(method, args, kwargs)

    def status(self) -> dict[str, Any]:
        return self.core.status()


class ProcessWriter:
    def __init__(self, cfg: Config, run_id: str | None, generation: str, timeout_s: float) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._ray = ray
        self._timeout_s = timeout_s
        # on the ModelActor's node: checkpoints in a local folder are uploaded from there
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._actor = (
            ray.remote(num_cpus=0, max_restarts=0)(_WriterActor)
            .options(scheduling_strategy=here)
            .remote(cfg, run_id, generation)
        )
        try:
            self.run_id = ray.get(self._actor.run_id.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError as exc:  # the Tracker refused to open: say why
            raise TrackingError(
                f"could not open the MLflow run at {cfg.tracking.uri}: {exc}"
            ) from exc

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._actor.call.remote(method, args, kwargs)  # fire and forget; ordered per caller

    def join(self, timeout_s: float | None = None) -> dict[str, Any]:
        t = self._timeout_s if timeout_s is None else timeout_s
        try:
            return self._ray.get(
                self._actor.status.remote(), timeout=t
            )  # runs after every earlier call
        except (self._ray.exceptions.GetTimeoutError, self._ray.exceptions.RayActorError) as exc:
            return {"errors": -1, "last_error": f"MLflow writer did not answer within {t}s: {exc}"}


def start_writer(
    cfg: Config,
    run_id: str | None,
    generation: str,
    mode: str,
    factory: Callable[..., Any] | None = None,
) -> ThreadWriter | ProcessWriter:
    if mode == "process":
        return ProcessWriter(cfg, run_id, generation, cfg.ray.call_timeout_s)
    return ThreadWriter(open_tracker(cfg, run_id, generation, factory))
