"""ModelCore's checkpoint calls: save, load (a rewind when older), list, best.

A save of weights already saved is a no-op; a load of an older checkpoint makes a copy of it
the newest (what a restart restores) and, when the MLflow run already has later steps, opens
a new run linked to it. A mixin of ``actors.model.core.ModelCore``, which owns the state.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from conf import to_dict
from pipelines.errors import CandlerayError
from pipelines.model.checkpoints import CheckpointInfo
from pipelines.version import code_version

if TYPE_CHECKING:
    from actors.model.tracking_writer import ProcessWriter, ThreadWriter
    from conf import Config
    from pipelines.model.checkpoints import CheckpointStore
    from pipelines.model.trainer import Trainer


class CheckpointCalls:
    """The checkpoint methods of ``ModelCore``."""

    cfg: Config
    trainer: Trainer
    store: CheckpointStore
    generation: str
    data_window: dict[str, Any]
    _tracking: ThreadWriter | ProcessWriter | None
    _recorded_run_id: str | None
    _last_ckpt: tuple[tuple[str, int], dict[str, Any]] | None
    _run_steps_to: int

    if TYPE_CHECKING:  # ModelCore's

        @property
        def run_id(self) -> str | None: ...
        def _send_metrics(self) -> None: ...
        def _publish(self) -> None: ...
        def _track(self, method: str, *args: Any, **kwargs: Any) -> None: ...
        def _register_best(self) -> None: ...

    def save_checkpoint(
        self, kind: str = "manual", is_best: bool = False, upload: bool = True
    ) -> dict[str, Any]:
        """Write the current state (atomically); a second save of the same weights is a no-op.

        ``upload``: also upload it to MLflow and register the best checkpoint if it changed
        (on-best saves mid-training pass False: see ``ModelCore._register_best``).

        "The same weights" is the same (generation, step), including those just restored or
        loaded: saving them again would only write a duplicate without the best flag.
        """
        key = (self.generation, self.trainer.step)
        last = self._last_ckpt
        if last is not None and last[0] == key and (not is_best or last[1]["is_best"]):
            if upload:  # e.g. a training job's last save, after an on-best save of that step
                self._register_best()
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
        if upload:  # the registry follows the saves that upload (``ModelCore._register_best``)
            self._register_best()
        return info.to_dict()

    def load_checkpoint(self, path: str | None = None) -> dict[str, Any]:
        """Load a listed checkpoint (default: the newest good one) into the training weights.

        Loading any other than the newest checkpoint is a rewind: a copy of it is written as
        the newest checkpoint, so a restart resumes from it, not from the abandoned future.
        Loading a step older than the MLflow run's newest opens a new run linked to it (as a
        restart does; ``actors.model.tracking_writer``): the run's step axis never repeats a step.
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
