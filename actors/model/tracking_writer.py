"""The ModelActor's MLflow writer: one Tracker, fed in order, off the training thread.

Two carriers with one interface (``submit(method, *args, **kwargs)``, ``join(timeout_s)``,
``run_id``, ``wait_opened(timeout_s)``):

* ``ProcessWriter`` — a small Ray actor owned by the ModelActor (0 CPUs). MLflow's Python
  (SQLAlchemy, HTTP) then runs in another process and never competes with training for
  the GIL; calls from one caller run in order. This is what the ModelActor uses.
* ``ThreadWriter`` — a thread in the same process, for ``ModelCore`` without Ray.

Either way the ModelActor stays the single writer of its training run: nothing else holds
the run's Tracker. A failing store is counted and reported, never allowed to stop training:

* The writer opens the run itself, in the background, retrying (0.5 s doubling to 60 s) until
  the store answers; every failed try is counted. Until then writes wait in its queue. So a
  store that is down or slow never stops the ModelActor from starting, restarting or training.
* ``join(timeout_s)`` waits at most ``timeout_s`` and returns the status: ``state`` (opening,
  open), ``pending`` writes, ``errors``, ``open_failures``, ``last_error`` and the
  ``failed_uploads`` with their paths. A status with ``pending > 0`` means "not yet", not lost.
* Checkpoint uploads are queued as a copy taken at queue time (``actors.model.upload_staging``), so
  retention may prune the checkpoint before the writer gets to it.

Restarts open a new run. A ModelCore that restores a checkpoint does not resume the run the
checkpoint names: the steps between that checkpoint and the crash were already logged there,
and training them again would log them twice. It opens a new run linked to the old one
(``candleray.previous_run``, ``candleray.restored_from`` = the restored step,
``candleray.restarts`` = how many restarts the lineage has had; the old run gets
``candleray.continued_in`` and ends KILLED if it was still RUNNING). Each run's step axis thus
only moves forward and never shows a step newer than the model's. Every run, first or not,
gets the same params (the resolved config), ``config/resolved.yaml`` and tags.

A rewind inside a running actor (``ModelCore.load_checkpoint`` of a step older than the run's
newest) follows the same rule: the ``rewind`` write, queued in order after the old run's
writes, ends the old run FINISHED and opens a new one linked to it (``candleray.opened_after``
= rewind; a restart's says restart), so the steps trained again never land on steps the old
run already has.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.model import upload_staging
from actors.model.run_plan import RunPlan
from actors.model.upload_staging import StagedFile

log = logging.getLogger(__name__)

# methods that upload a file, and the position of its path among their arguments
_FILE_ARG = {"log_artifact": 0, "register_model_version": 1}
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 60.0
# writes held while the run cannot be opened; past this the oldest are dropped (and counted)
_MAX_QUEUED = 20_000
_FAILED_UPLOADS_KEPT = 20


class WriterCore:
    """Opens the run and applies writer calls to its Tracker; counts failures, never raises."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.tracker: Any = None
        self.ready = False
        self.errors = 0
        self.open_failures = 0
        self.dropped = 0
        self.rewinds = 0  # rewinds applied: the run open now is the one after this many
        self.last_error = ""
        self.failed_uploads: collections.deque[str] = collections.deque(maxlen=_FAILED_UPLOADS_KEPT)

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.ready else None

    def open(self) -> bool:
        """Try once to create and prepare the run (a run created earlier is kept, not remade)."""
        try:
            if self.tracker is None:
                self.tracker = self.plan.create()
            self.plan.prepare(self.tracker)
            self.ready = True
        except Exception as exc:  # the store is down or refuses: retried later
            self.open_failures += 1
            self._failed("open run", exc)
        return self.ready

    def rewind(self, generation: str, restored_from: int) -> None:
        """End this run FINISHED and open the next one, linked to it (one try here; the
        worker retries until it opens): the model went back to step ``restored_from``."""
        old = self.tracker
        try:
            old.set_terminated("FINISHED")
        except Exception as exc:  # left RUNNING: the next run's link ends it KILLED
            self._failed("end run before a rewind", exc)
        self.plan = self.plan.rewound(old.run_id, generation, restored_from)
        self.tracker, self.ready = None, False
        self.rewinds += 1
        self.open()

    def log_steps(self, batch: list[tuple[int, dict[str, float]]]) -> None:
        for step, m in batch:
            self.tracker.log_metrics(m, step)
        self.tracker.flush()

    def call(self, method: str, args: tuple, kwargs: dict) -> None:
        if method == "rewind":
            self.rewind(*args)
            return
        fn: Callable[..., Any] = (
            self.log_steps if method == "log_steps" else getattr(self.tracker, method)
        )
        i = _FILE_ARG.get(method)
        item = args[i] if i is not None else None
        try:
            if i is not None and isinstance(item, StagedFile):
                with upload_staging.local_file(item) as local:
                    fn(*args[:i], local, *args[i + 1 :], **kwargs)
            else:
                fn(*args, **kwargs)
        except Exception as exc:  # a failing store must not stop training: count and report it
            self._failed(method, exc)
            if isinstance(item, StagedFile):
                self.failed_uploads.append(f"{item.original}: {exc}")

    def drop(self, method: str, args: tuple) -> None:
        """Count a write dropped from a full queue (and clean its staged upload)."""
        self.dropped += 1
        i = _FILE_ARG.get(method)
        if i is not None and isinstance(args[i], StagedFile):
            self.failed_uploads.append(f"{args[i].original}: dropped, the MLflow queue was full")
            try:
                with upload_staging.local_file(args[i]):
                    pass
            except OSError:
                pass

    def status(self, pending: int) -> dict[str, Any]:
        return {
            "state": "open" if self.ready else "opening",
            "run_id": self.run_id,
            "pending": pending,
            "errors": self.errors,
            "open_failures": self.open_failures,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "failed_uploads": list(self.failed_uploads),
        }

    def _failed(self, operation: str, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{operation}: {exc}"
        log.warning("MLflow %s failed: %s", operation, exc)


class _Worker:
    """A thread that opens the run (retrying) and then works through the queue in order."""

    def __init__(self, plan: RunPlan) -> None:
        self.core = WriterCore(plan)
        self._cv = threading.Condition()
        self._items: collections.deque[tuple[str, tuple, dict]] = collections.deque()
        self._busy = False
        self.first_try = threading.Event()  # set once the first open attempt has ended
        threading.Thread(target=self._run, name="mlflow-writer", daemon=True).start()

    def put(self, method: str, args: tuple, kwargs: dict) -> None:
        with self._cv:
            self._items.append((method, args, kwargs))
            if len(self._items) > _MAX_QUEUED:
                old_method, old_args, _ = self._items.popleft()
                self.core.drop(old_method, old_args)
            self._cv.notify_all()

    def join(self, timeout_s: float) -> dict[str, Any]:
        """Wait at most ``timeout_s`` for the queue to empty; the status says what is left."""
        with self._cv:
            self._cv.wait_for(lambda: not self._items and not self._busy, max(timeout_s, 0.0))
            return self.core.status(len(self._items) + self._busy)

    def _open(self) -> None:
        """Open the run, retrying until the store answers (at start and after a rewind)."""
        delay = _RETRY_FIRST_S
        while not self.core.ready and not self.core.open():
            self.first_try.set()
            time.sleep(delay)
            delay = min(2 * delay, _RETRY_MAX_S)
        self.first_try.set()

    def _run(self) -> None:
        while True:
            self._open()
            with self._cv:
                self._cv.wait_for(lambda: bool(self._items))
                method, args, kwargs = self._items.popleft()
                self._busy = True
            try:
                self.core.call(method, args, kwargs)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


def _staged(method: str, args: tuple) -> tuple:
    """``args`` with the file to upload replaced by a copy taken now (see upload_staging)."""
    i = _FILE_ARG.get(method)
    if i is None:
        return args
    return (*args[:i], upload_staging.stage(args[i]), *args[i + 1 :])


class ThreadWriter:
    """The writer as a thread of this process (ModelCore without Ray)."""

    def __init__(self, plan: RunPlan) -> None:
        self._worker = _Worker(plan)
        self._rewinds = 0  # submitted; the run is the current one once the writer applied them

    @property
    def run_id(self) -> str | None:
        """The run's id once it is open (after the rewinds submitted so far); None until then."""
        core = self._worker.core
        return core.run_id if core.rewinds >= self._rewinds else None

    def wait_opened(self, timeout_s: float) -> None:
        self._worker.first_try.wait(timeout_s)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._rewinds += method == "rewind"
        self._worker.put(method, _staged(method, args), kwargs)

    def join(self, timeout_s: float) -> dict[str, Any]:
        return self._worker.join(timeout_s)

    def status(self, timeout_s: float) -> dict[str, Any]:
        """The writer's status now, waiting for nothing (``timeout_s`` is ProcessWriter's)."""
        return self._worker.join(0.0)


class _WriterActor:
    """The Ray actor behind ProcessWriter: every method answers at once or within its wait."""

    def __init__(self, plan: RunPlan) -> None:
        logging.basicConfig(level=logging.INFO)
        self.worker = _Worker(plan)

    def first_open(self, wait_s: float) -> str | None:
        self.worker.first_try.wait(wait_s)
        return self.worker.core.run_id

    def run_id(self, rewinds: int = 0) -> str | None:
        """The open run's id once ``rewinds`` rewinds are applied; None until then."""
        core = self.worker.core
        return core.run_id if core.rewinds >= rewinds else None

    def call(self, method: str, args: tuple, kwargs: dict) -> None:
        self.worker.put(method, args, kwargs)

    def status(self, wait_s: float) -> dict[str, Any]:
        return self.worker.join(wait_s)


class ProcessWriter:
    """The writer as a Ray actor beside the ModelActor; creating it waits for nothing."""

    def __init__(self, plan: RunPlan) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._ray = ray
        # on the ModelActor's node: checkpoints in a local folder are uploaded from there
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._actor = (
            ray.remote(num_cpus=0, max_restarts=0)(_WriterActor)
            .options(scheduling_strategy=here)
            .remote(plan)
        )
        self._run_id: str | None = None
        self._rewinds = 0
        self._id_ref = self._actor.run_id.remote()
        self._status_ref: Any = None

    @property
    def run_id(self) -> str | None:
        """The run's id once the writer has reported it open; never waits."""
        if self._run_id is None:
            ready, _ = self._ray.wait([self._id_ref], timeout=0)
            if ready:
                with contextlib.suppress(self._ray.exceptions.RayError):
                    self._run_id = self._ray.get(ready[0])
                if self._run_id is None:
                    self._id_ref = self._actor.run_id.remote(self._rewinds)
        return self._run_id

    def wait_opened(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` for the writer's first try at opening the run."""
        self._id_ref = self._actor.first_open.remote(timeout_s)
        self._ray.wait([self._id_ref], timeout=timeout_s)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        # fire and forget; the actor only queues it, in the order of submission
        self._actor.call.remote(method, _staged(method, args), kwargs)
        if method == "rewind":  # the run open now is the old one: ask again until the next
            self._rewinds += 1
            self._run_id = None
            self._id_ref = self._actor.run_id.remote(self._rewinds)

    def join(self, timeout_s: float) -> dict[str, Any]:
        """The writer's status within ``timeout_s``; the writer itself waits half of that.

        An actor runs one call at a time, so a status call that missed its deadline is not
        sent again while it is still queued: it would only push the next one further back.
        """
        ray = self._ray
        deadline = time.monotonic() + timeout_s
        if self._status_ref is not None:  # an older, unanswered status call: let it finish
            ready, _ = ray.wait([self._status_ref], timeout=0.5 * timeout_s)
            if not ready:
                return self._unanswered(timeout_s, "")
        left = max(deadline - time.monotonic(), 0.0)
        self._status_ref = self._actor.status.remote(0.5 * left)
        ready, _ = ray.wait([self._status_ref], timeout=left)
        if not ready:
            return self._unanswered(timeout_s, "")
        ref, self._status_ref = self._status_ref, None
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            return self._unanswered(timeout_s, str(exc))

    def status(self, timeout_s: float) -> dict[str, Any]:
        """The writer's status as it is now, within ``timeout_s``, for readers on another
        thread than ``join``'s (GET /health): it shares no state with ``join`` and queues
        nothing, so the writer's work and the training thread are untouched."""
        ray = self._ray
        ref = self._actor.status.remote(0.0)
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            return self._unanswered(timeout_s, "")
        try:
            return ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            return self._unanswered(timeout_s, str(exc))

    def _unanswered(self, timeout_s: float, died: str) -> dict[str, Any]:
        why = f"died: {died}" if died else f"did not answer within {timeout_s:.1f}s"
        return {
            "state": "dead" if died else "starting",
            "run_id": self._run_id,
            "pending": None,  # unknown: the writer did not answer
            "errors": 1 if died else 0,
            "open_failures": 0,
            "dropped": 0,
            "last_error": f"MLflow writer {why}",
            "failed_uploads": [],
        }


def start_writer(plan: RunPlan, mode: str, checkpoint_uri: str) -> ThreadWriter | ProcessWriter:
    """Start the writer of ``plan``'s run; ``mode``: ``process`` (Ray actor) or ``thread``.

    ``checkpoint_uri``: the model's checkpoint folder, whose stale upload stages are removed.
    """
    upload_staging.remove_stale(checkpoint_uri)
    if mode == "process":
        return ProcessWriter(plan)
    return ThreadWriter(plan)
