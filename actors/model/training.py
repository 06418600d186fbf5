"""ModelCore's training calls: one batch, samples in order, shuffled epochs.

Each step's metrics go to the run's writer and may write a checkpoint; a call that fails
part-way publishes the steps it applied and says how many (``PartialTrainingError``), so a
caller never retries blindly. A mixin of ``actors.model.core.ModelCore``, which owns the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.data.dataset import Dataset
from pipelines.errors import InvalidInputError, PartialTrainingError
from pipelines.model.trainer import check_batch, mean_metrics, sample_indices

if TYPE_CHECKING:
    from conf import Config
    from pipelines.model.network import ModelSpec
    from pipelines.model.trainer import Trainer


class TrainingCalls:
    """The training methods of ``ModelCore`` (run one at a time by the actor)."""

    cfg: Config
    spec: ModelSpec
    trainer: Trainer
    summary: dict[str, Any]
    _step_metrics: list[tuple[int, dict[str, float]]]
    _run_steps_to: int

    if TYPE_CHECKING:  # ModelCore's

        def _send_metrics(self) -> None: ...
        def _publish(self) -> None: ...
        def save_checkpoint(
            self, kind: str = "manual", is_best: bool = False, upload: bool = True
        ) -> dict[str, Any]: ...

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
