"""ModelCore: the logic of the ModelActor, as a plain class that tests can drive without Ray.

It owns the trainer (model, optimizer, step, history), the checkpoint store and the MLflow
writer of its run (``actors.model.tracking_writer``). Its training calls are in
``actors.model.training``, its checkpoint calls in ``actors.model.checkpoints``. It is not
thread-safe for training and does not need to be: the Ray actor runs its training methods one
at a time. Readers (metrics, snapshots) only see values published at
the end of a step or call — references swapped whole, never the live training tensors.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from actors.model.checkpoints import CheckpointCalls
from actors.model.run_plan import RunPlan
from actors.model.tracking_writer import ProcessWriter, ThreadWriter, start_writer
from actors.model.training import TrainingCalls
from conf import Config
from pipelines.data.features import n_features
from pipelines.errors import CheckpointError
from pipelines.model.checkpoints import CheckpointStore
from pipelines.model.network import ModelSpec, resolve_device
from pipelines.model.trainer import Trainer

log = logging.getLogger(__name__)


def spec_from_config(cfg: Config) -> ModelSpec:
    return ModelSpec.from_config(
        cfg.model, n_features(len(cfg.data.extra_timeframes)), cfg.features.window
    )


@dataclass(frozen=True)
class Snapshot:
    """Weights at one version. ``generation`` changes on every (re)start of the actor."""

    generation: str
    version: int
    state: dict[str, torch.Tensor]
    spec: dict[str, Any]


class ModelCore(TrainingCalls, CheckpointCalls):
    def __init__(
        self,
        cfg: Config,
        *,
        writer: str = "thread",
        tracker_factory: Callable[..., Any] | None = None,
    ) -> None:
        """``writer``: ``process`` (a Ray actor; used by the ModelActor) or ``thread`` (no Ray)."""
        self.cfg = cfg
        self.spec = spec_from_config(cfg)
        self.generation = uuid.uuid4().hex[:12]
        if cfg.ray.torch_threads > 0:
            torch.set_num_threads(cfg.ray.torch_threads)
        if cfg.train.workers > 1:  # data-parallel: the ranks train, on their own devices
            from actors.model.ranks import DistributedTrainer

            self.device = torch.device("cpu")
            self.trainer: Trainer = DistributedTrainer(self.spec, cfg, seed=cfg.run.seed)
        else:
            self.device = resolve_device(cfg.model.device)
            self.trainer = Trainer(self.spec, cfg.train, self.device, seed=cfg.run.seed)
        self.store = CheckpointStore(
            f"{cfg.checkpoint.uri.rstrip('/')}/{cfg.run.name}", cfg.checkpoint.keep_last
        )
        self.run_id: str | None = None
        self._registered_best: tuple[int, float] | None = None
        self._last_ckpt: tuple[tuple[str, int], dict[str, Any]] | None = None
        self._step_metrics: list[tuple[int, dict[str, float]]] = []
        self._run_steps_to = 0  # the newest step the current MLflow run has metrics of
        self.restored_from: int | None = None
        self.data_window: dict[str, Any] = {}
        restored = self.store.load_latest_good()
        if restored is not None:
            state, meta = restored
            if state.get("spec") != self.spec.to_dict():
                raise CheckpointError(
                    f"checkpoints under {self.store.uri} were made for model {state.get('spec')}, "
                    f"but this config builds {self.spec.to_dict()}; use another run.name for a new "
                    "model, or the model.*/features.*/data.extra_timeframes it was trained with"
                )
            self.trainer.load_state(state)
            self.run_id = meta.get("mlflow_run_id")
            self.data_window = meta.get("data", {})
            self.restored_from = self.trainer.step
            self._restored_generation = meta.get("generation")  # finds its MLflow run if unnamed
            # saving these weights again returns this record (and its best flag) unchanged
            self._last_ckpt = (
                (self.generation, self.trainer.step),
                self.store.info(meta).to_dict(),
            )
            log.info("restored %s from checkpoint step %d", cfg.run.name, self.trainer.step)
        self._tracking = None
        if cfg.tracking.enabled:
            # a new run, linked to the restored checkpoint's (actors.model.tracking_writer says why),
            # opened by the writer in the background: a store that is down or slow never
            # stops a start; the short wait lets a healthy store's run into the first checkpoint
            plan = RunPlan(
                cfg,
                self.generation,
                previous_run_id=self.run_id,
                restored_from=self.restored_from,
                previous_generation=self._restored_generation,
                factory=tracker_factory,
            )
            self._tracking = start_writer(plan, writer, self.store.uri)
            self._tracking.wait_opened(min(5.0, 0.25 * cfg.ray.call_timeout_s))
        self._publish()

    # -- tracking ---------------------------------------------------------------------------
    _tracking: ThreadWriter | ProcessWriter | None = None
    _recorded_run_id: str | None = None
    _restored_generation: str | None = None

    @property
    def run_id(self) -> str | None:
        """This core's MLflow run once the writer has opened it; until then the run named by
        the restored checkpoint (the one the new run continues), so checkpoints keep the link."""
        live = self._tracking.run_id if self._tracking is not None else None
        return live or self._recorded_run_id

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        self._recorded_run_id = value

    def _writer_wait_s(self, wait_s: float | None) -> float:
        """How long a call waits for the writer: by default half of ray.call_timeout_s, so the
        status reaches a caller holding that deadline before it gives up."""
        return 0.5 * self.cfg.ray.call_timeout_s if wait_s is None else wait_s

    def _send_metrics(self) -> None:
        """Hand the buffered per-step metrics to the writer as one message.

        One hand-off per ``log_every_steps`` steps (and at the end of each call), not one per
        step: each hand-off costs the training thread a call (and, with the thread writer, GIL
        time), so fewer, larger ones cost less.
        """
        batch, self._step_metrics = self._step_metrics, []
        if batch:
            self._track("log_steps", batch)

    def _track(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._tracking is not None:
            self._tracking.submit(method, *args, **kwargs)

    def _register_best(self) -> None:
        """Register the best checkpoint (alias ``best``) unless it already is.

        Done on each save that uploads (explicit saves, such as the one that ends a training
        job, and periodic ones), on flush and on close, rather than at every new best: early
        in training the best moves every few dozen steps, and each registration uploads a
        checkpoint. Never on a read: GET /health reads ``tracking_status``.
        """
        best = self.store.best()
        if best is None or not self.cfg.tracking.register_best:
            return
        key = (best.step, best.created)
        if key == self._registered_best:
            return
        self._registered_best = key
        self._track(
            "register_model_version",
            self.cfg.run.name,
            self.store.full_uri(best.path),
            alias="best",
        )

    def flush_tracking(self, wait_s: float | None = None) -> dict[str, Any]:
        """Register the best checkpoint, queue a flush and wait for the writer at most
        ``wait_s`` (default: half of ray.call_timeout_s).

        Returns the writer's status: ``state`` (opening/open), ``pending`` writes (0: all
        done), ``errors``, ``open_failures``, ``last_error``, ``failed_uploads``. Writes still
        pending go on in the background; a slow store never makes this call miss its deadline.
        """
        if self._tracking is None:
            return {"enabled": False}
        self._register_best()
        self._send_metrics()
        self._track("flush")
        return {"enabled": True, **self._tracking.join(self._writer_wait_s(wait_s))}

    def tracking_status(self, wait_s: float = 2.0) -> dict[str, Any]:
        """The writer's status (as ``flush_tracking`` returns it), read only: it registers,
        sends and flushes nothing, so any thread may call it while training runs."""
        if self._tracking is None:
            return {"enabled": False}
        return {"enabled": True, **self._tracking.status(wait_s)}

    # -- publishing -------------------------------------------------------------------------
    def _publish(self) -> None:
        """Swap in a new snapshot and metrics summary (whole references; readers never see a torn one)."""
        self._send_metrics()
        self.snapshot = Snapshot(
            self.generation, self.trainer.step, self.trainer.weights_cpu(), self.spec.to_dict()
        )
        first = self.trainer.step - len(self.trainer.history) + 1
        self.summary = {
            **self.trainer.summary(),
            "generation": self.generation,
            "version": self.trainer.step,
            "restored_from": self.restored_from,
            "device": str(getattr(self.trainer, "rank_device", self.device)),
            "workers": self.cfg.train.workers,
            "pid": os.getpid(),
            "mlflow_run_id": self.run_id,
            # the last steps' metrics, oldest first (one per step: the newest is this step)
            "history": [{"step": first + i, **m} for i, m in enumerate(self.trainer.history)],
        }

    def set_data_window(self, window: dict[str, Any]) -> None:
        """Record which data the model is trained on (goes into every checkpoint's metadata)."""
        self.data_window = dict(window)
        self._track("log_dict", dict(window), "data/window.json")

    def log_evaluation(
        self,
        metrics: dict[str, float],
        step: int | None = None,
        artifacts: dict[str, dict] | None = None,
    ) -> None:
        s = self.trainer.step if step is None else step
        self._track("log_metrics", dict(metrics), s)
        self._run_steps_to = max(self._run_steps_to, s)
        for name, payload in (artifacts or {}).items():
            self._track("log_dict", payload, name)

    def close(self, status: str = "FINISHED", wait_s: float | None = None) -> dict[str, Any]:
        """Register the best checkpoint, flush and end the run (FINISHED or FAILED); waits
        like ``flush_tracking`` and returns the same status. The data-parallel ranks go too
        (their processes, and the GPUs their placement group holds), whatever the run's end."""
        try:
            if self._tracking is None:
                return {"enabled": False}
            self._register_best()
            self._send_metrics()
            self._track("set_terminated", status)  # flushes first
            return {"enabled": True, **self._tracking.join(self._writer_wait_s(wait_s))}
        finally:
            shutdown = getattr(self.trainer, "shutdown", None)  # DistributedTrainer's
            if shutdown is not None:
                shutdown()
