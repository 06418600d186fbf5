"""ModelCore: the logic of the ModelActor, as a plain class that tests can drive without Ray.

It owns the trainer (model, optimizer, step, history), the checkpoint store and the MLflow
writer of its run (``actors.tracking_writer``). It is not thread-safe for training and does not need to be: the Ray actor runs its
training methods one at a time. Readers (metrics, snapshots) only see values published at
the end of a step or call — references swapped whole, never the live training tensors.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actors.tracking_writer import ProcessWriter, RunPlan, ThreadWriter, start_writer
from conf import Config, to_dict
from pipelines.data.dataset import Dataset
from pipelines.data.features import n_features
from pipelines.errors import (
    CandlerayError,
    CheckpointError,
    InvalidInputError,
    PartialTrainingError,
)
from pipelines.model.checkpoints import CheckpointInfo, CheckpointStore
from pipelines.model.network import ModelSpec, resolve_device
from pipelines.model.trainer import Trainer, check_batch, mean_metrics, sample_indices
from pipelines.version import code_version

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


class ModelCore:
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
            # a new run, linked to the restored checkpoint's (actors.tracking_writer says why),
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

        Done when tracking is flushed rather than at every new best: early in training the
        best moves every few dozen steps, and each registration uploads a checkpoint.
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
            "device": str(self.device),
            "pid": os.getpid(),
            "mlflow_run_id": self.run_id,
            # the last steps' metrics, oldest first (one per step: the newest is this step)
            "history": [{"step": first + i, **m} for i, m in enumerate(self.trainer.history)],
        }

    # -- training ---------------------------------------------------------------------------
    def _after_step(self, m: dict[str, float], kind: str) -> None:
        step = self.trainer.step
        self._step_metrics.append((step, m))
        self._run_steps_to = max(self._run_steps_to, step)
        if len(self._step_metrics) >= self.cfg.tracking.log_every_steps:
            self._send_metrics()
        cfg = self.cfg.checkpoint
        best = (
            cfg.on_best
            and step % self.cfg.train.trend_window == 0
            and self.trainer.is_new_best(cfg.best_metric)
        )
        periodic = step % cfg.every_steps == 0
        if best or periodic:
            # off-cadence best checkpoints stay local; the best is registered in MLflow on flush
            self.save_checkpoint(kind=kind, is_best=best, upload=periodic)
        if step % self.cfg.tracking.log_every_steps == 0:
            # "version" stays the published snapshot's; "steps" moves on during a long call
            self.summary = {**self.summary, **self.trainer.summary()}

    def _fail_partway(
        self, exc: Exception, call: str, start_step: int, samples: int, retry: str
    ) -> None:
        """From a training call's ``except``: if steps were applied, publish them and raise
        PartialTrainingError saying how many; else return, and the caller re-raises ``exc``
        (nothing changed, so a plain retry is safe)."""
        applied = self.trainer.step - start_step
        if applied == 0:
            return
        self._publish()  # readers and checkpoints see the weights the caller now has
        cause = exc.__cause__ if isinstance(exc, PartialTrainingError) and exc.__cause__ else exc
        raise PartialTrainingError(
            f"{call} failed after {applied} step(s) on {samples} sample(s) were applied: "
            f"{type(cause).__name__}: {cause}. Those steps stay applied and are published as "
            f"weights version {self.trainer.step}; {retry}",
            steps_applied=applied,
            samples_applied=samples,
            version=self.trainer.step,
        ) from cause

    def train_batch(
        self, x: Any, y_candle: Any, y_action: Any, kind: str = "manual"
    ) -> dict[str, Any]:
        start = self.trainer.step
        try:
            m = self.trainer.train_step(x, y_candle, y_action)
            self._after_step(m, kind)  # a checkpoint that cannot be written fails here
        except Exception as exc:
            self._fail_partway(
                exc, "train_batch", start, len(x), "do not retry this batch: it would train twice"
            )
            raise
        self._publish()
        return {**m, "step": self.trainer.step, "version": self.trainer.step}

    def train_samples(
        self, data: Dataset, indices: Any = None, batch_size: int | None = None, kind: str = "batch"
    ) -> list[dict[str, float]]:
        """Train on ``data[indices]`` in order, ``batch_size`` at a time.

        ``indices``: positions, a boolean mask over ``data``, or None (all). All of it is
        checked first: bad input changes nothing. A failure after some steps raises
        PartialTrainingError naming the samples already trained, and publishes them.
        """
        idx = sample_indices(indices, len(data))
        bs = self.cfg.train.batch_size if batch_size is None else batch_size
        if bs < 1:
            raise InvalidInputError(f"batch_size={bs} must be >= 1 (or None: train.batch_size)")
        check_batch(self.spec, data.x[idx], data.y_candle[idx], data.y_action[idx])
        start, out = self.trainer.step, []
        try:
            for s in range(0, len(idx), bs):
                b = idx[s : s + bs]
                m = self.trainer.train_step(data.x[b], data.y_candle[b], data.y_action[b])
                self._after_step(m, kind)
                out.append(m)
        except Exception as exc:
            done = min((self.trainer.step - start) * bs, len(idx))
            self._fail_partway(
                exc,
                f"train_samples (batch {len(out) + 1} of {-(-len(idx) // bs)})",
                start,
                done,
                f"the first {done} of the {len(idx)} samples (indices[:{done}]) are trained: "
                f"go on with indices[{done}:] after fixing the failing batch, not the whole call",
            )
            raise
        self._publish()
        return out

    def train_epochs(
        self,
        data: Dataset,
        epochs: int,
        batch_size: int | None = None,
        seed: int = 0,
        kind: str = "batch",
    ) -> list[dict[str, float]]:
        """``epochs`` shuffled passes; returns the per-sample mean metrics of each epoch.

        A failure after some steps raises PartialTrainingError (see ``train_samples``).
        """
        rng = np.random.default_rng(seed)
        start, out = self.trainer.step, []
        try:
            for _ in range(epochs):
                ms = self.train_samples(data, rng.permutation(len(data)), batch_size, kind)
                out.append(mean_metrics(ms))
        except Exception as exc:
            inner = exc.samples_applied if isinstance(exc, PartialTrainingError) else 0
            self._fail_partway(
                exc,
                f"train_epochs (epoch {len(out) + 1} of {epochs})",
                start,
                len(out) * len(data) + inner,
                f"{len(out)} epoch(s) finished; ask for the remaining epochs, not all {epochs}",
            )
            raise
        return out

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

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(
        self, kind: str = "manual", is_best: bool = False, upload: bool = True
    ) -> dict[str, Any]:
        """Write the current state (atomically); a second save of the same weights is a no-op.

        "The same weights" is the same (generation, step), including those just restored or
        loaded: saving them again would only write a duplicate without the best flag.
        """
        key = (self.generation, self.trainer.step)
        last = self._last_ckpt
        if last is not None and last[0] == key and (not is_best or last[1]["is_best"]):
            return last[1]
        meta = {
            "step": self.trainer.step,
            "kind": kind,
            "is_best": is_best,
            "metrics": self.trainer.rolling(),
            "config": to_dict(self.cfg),
            "data": self.data_window,
            "code_version": code_version(),
            "mlflow_run_id": self.run_id,
            "generation": self.generation,
        }
        info = self.store.save(self.trainer.state(), meta)
        if self.cfg.tracking.log_checkpoints and upload:
            self._track("log_artifact", self.store.full_uri(info.path), "checkpoints")
        self._last_ckpt = (key, info.to_dict())
        return info.to_dict()

    def load_checkpoint(self, path: str | None = None) -> dict[str, Any]:
        """Load a listed checkpoint (default: the newest good one) into the training weights.

        Loading any other than the newest checkpoint is a rewind: a copy of it is written as
        the newest checkpoint, so a restart resumes from it, not from the abandoned future.
        Loading a step older than the MLflow run's newest opens a new run linked to it (as a
        restart does; ``actors.tracking_writer``): the run's step axis never repeats a step.
        """
        if path is None:
            got = self.store.load_latest_good()
            if got is None:
                raise CandlerayError(
                    f"no checkpoint under {self.store.uri}; train first or pass a path"
                )
            state, meta = got
            path = self.store.info(meta).path
        else:
            state, meta = self.store.load(path)
        self.trainer.load_state(state)
        # new lineage: (generation, version) never names two different sets of weights, so
        # predictors reload even when the step goes back to a number they have seen
        self.generation = uuid.uuid4().hex[:12]
        if self._tracking is not None and self.trainer.step < self._run_steps_to:
            self._send_metrics()  # the old run's steps go to the old run
            self._recorded_run_id = self.run_id  # named until the new run is open
            self._track("rewind", self.generation, self.trainer.step)
            self._run_steps_to = 0
        newest = self.store.is_newest(path)
        record = (
            self.store.info(meta)
            if newest
            else self.store.promote(path, generation=self.generation, mlflow_run_id=self.run_id)
        )
        self._last_ckpt = ((self.generation, self.trainer.step), record.to_dict())
        self._publish()
        return {
            "step": self.trainer.step,
            "kind": meta.get("kind"),
            "file": meta.get("file"),
            "path": record.path,  # the newest checkpoint now: what a restart restores
        }

    def list_checkpoints(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self.store.list()]

    def best_checkpoint(self) -> CheckpointInfo | None:
        return self.store.best()

    def mark_best(self, path: str) -> dict[str, Any]:
        """Make checkpoint ``path`` the best one and register it in MLflow under the alias
        ``best`` (queued to the writer, like every registration). CheckpointError if ``path``
        does not load. ``registered``: whether a registration was queued (tracking on)."""
        info = self.store.mark_best(path)
        if self._last_ckpt is not None:  # keep the cached record's flag true to the store
            key, record = self._last_ckpt
            self._last_ckpt = (key, {**record, "is_best": record["path"] == info.path})
        self._register_best()
        registered = self._tracking is not None and self.cfg.tracking.register_best
        return {
            **info.to_dict(),
            "model": self.cfg.run.name,
            "alias": "best",
            "registered": registered,
        }

    def close(self, status: str = "FINISHED", wait_s: float | None = None) -> dict[str, Any]:
        """Register the best checkpoint, flush and end the run (FINISHED or FAILED); waits
        like ``flush_tracking`` and returns the same status."""
        if self._tracking is None:
            return {"enabled": False}
        self._register_best()
        self._send_metrics()
        self._track("set_terminated", status)  # flushes first
        return {"enabled": True, **self._tracking.join(self._writer_wait_s(wait_s))}
