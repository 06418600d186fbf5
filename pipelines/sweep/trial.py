"""One trial of a sweep: the Ray Tune function trainable.

The trial process owns its weights: a plain ``Trainer`` in the trial's own Tune actor, not a
ModelActor per trial. A ModelActor exists to be shared (Serve replicas, live sessions and jobs
all call one named model); a trial's weights are private, so an actor of its own would only add
a process, a named-actor namespace entry and a call per batch for K concurrent trials.

Each epoch: shuffled passes over the training windows (the trainer ``candleray train`` drives
through the ModelActor), then the held-out windows are evaluated twice, as ``candleray train``
reports them: the trainer's per-sample losses and direction accuracy (``holdout/total_loss``,
``holdout/direction_accuracy``) and the predictor's evaluation against the baselines
(``holdout/dir_acc``, ``holdout/close_mae``, ...; ``pipelines.jobs.evaluation``). The epoch's
figures go to Tune with a checkpoint: the latest state (a resumed trial continues from it) and
the trial's best model so far in the project's checkpoint layout (what MLflow gets).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conf import Config, to_dict
from pipelines.sweep.space import dataset_key, with_values

# what every epoch reports: the figures --metric may rank by (besides these, "epoch", "steps")
METRICS = (
    "holdout/total_loss",
    "holdout/candle_loss",
    "holdout/action_loss",
    "holdout/direction_accuracy",
    "holdout/action_accuracy",
    "holdout/dir_acc",
    "holdout/dir_acc_persistence",
    "holdout/action_acc",
    "holdout/close_mae",
    "holdout/close_mae_persistence",
    "train/total_loss",
    "train/direction_accuracy",
)
LATEST = "latest.pt"
STATE = "trial.json"
BEST_DIR = "best"  # a CheckpointStore folder holding the trial's best model


def _or_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _epoch_metrics(trainer: Any, predictor: Any, split: Any, steps: list) -> dict[str, float]:
    from pipelines.jobs.evaluation import evaluate_split
    from pipelines.model.trainer import mean_metrics

    h = split.holdout
    held = trainer.evaluate(h.x, h.y_candle, h.y_action)
    predictor.load(trainer.weights_cpu(), trainer.step)
    overall = evaluate_split(predictor, split).loc["ALL"]
    train = mean_metrics(steps)
    return {
        "holdout/total_loss": held["total_loss"],
        "holdout/candle_loss": held["candle_loss"],
        "holdout/action_loss": held["action_loss"],
        "holdout/direction_accuracy": held["candle_accuracy"],
        "holdout/action_accuracy": held["action_accuracy"],
        **{
            f"holdout/{k}": float(overall[k])
            for k in ("dir_acc", "dir_acc_persistence", "action_acc", "close_mae")
        },
        "holdout/close_mae_persistence": float(overall["close_mae_persistence"]),
        "train/total_loss": train["total_loss"],
        "train/direction_accuracy": train["candle_accuracy"],
    }


def _save(
    folder: Path,
    trainer: Any,
    state: dict[str, Any],
    best_blob: bytes | None,
    best_meta: dict[str, Any],
) -> None:
    from pipelines.model.checkpoints import CheckpointStore

    torch.save(trainer.state(), folder / LATEST)
    (folder / STATE).write_text(json.dumps(state))
    if best_blob is not None:
        best = torch.load(io.BytesIO(best_blob), map_location="cpu", weights_only=True)
        CheckpointStore(str(folder / BEST_DIR), keep_last=1).save(best, best_meta)


def run_trial(
    config: dict[str, Any],
    *,
    base: Config,
    datasets: dict[str, Any],
    metric: str,
    mode: str,
    threads: int,
) -> None:
    """Train one trial (``config``: the dotted values Tune drew) and report every epoch."""
    import ray
    from ray import tune

    from pipelines.data.features import n_features
    from pipelines.model.network import ModelSpec, resolve_device
    from pipelines.model.trainer import Trainer
    from serve.predictor import Predictor

    values = dict(config)
    cfg = with_values(base, values)
    torch.set_num_threads(cfg.ray.torch_threads if cfg.ray.torch_threads > 0 else max(1, threads))
    device = resolve_device(cfg.model.device)  # a device this node lacks fails the trial here
    split = ray.get(datasets[dataset_key(values)])
    spec = ModelSpec.from_config(
        cfg.model, n_features(len(cfg.data.extra_timeframes)), cfg.features.window
    )
    trainer = Trainer(spec, cfg.train, device, seed=cfg.run.seed)
    predictor = Predictor(spec, str(device))
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0}
    best_blob: bytes | None = None
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            trainer.load_state(torch.load(Path(d) / LATEST, map_location=device, weights_only=True))
            state = json.loads((Path(d) / STATE).read_text())
            from pipelines.model.checkpoints import CheckpointStore

            found = CheckpointStore(str(Path(d) / BEST_DIR)).load_latest_good()
            if found is not None:
                buf = io.BytesIO()
                torch.save(found[0], buf)
                best_blob = buf.getvalue()
    train, bs = split.train, cfg.train.batch_size
    for epoch in range(int(state["epoch"]), cfg.train.epochs):
        # one generator per epoch, so a resumed trial shuffles as an uninterrupted one would
        perm = np.random.default_rng([cfg.run.seed, epoch]).permutation(len(train))
        steps = [
            trainer.train_step(train.x[idx], train.y_candle[idx], train.y_action[idx])
            for idx in (perm[s : s + bs] for s in range(0, len(perm), bs))
        ]
        metrics = _epoch_metrics(trainer, predictor, split, steps)
        state["epoch"] = epoch + 1
        if better(metrics[metric], state["best"], mode):
            state["best"], state["best_epoch"] = metrics[metric], epoch + 1
            state["best_step"] = trainer.step
            state["best_direction_accuracy"] = metrics.get("holdout/direction_accuracy")
            buf = io.BytesIO()
            torch.save(trainer.state(), buf)
            best_blob = buf.getvalue()
        best_meta = {
            "step": int(state.get("best_step", trainer.step)),
            "kind": "sweep",
            "is_best": True,
            "epoch": state["best_epoch"],
            "metrics": {metric: state["best"]} if state["best"] is not None else {},
            "config": to_dict(cfg),
        }
        with tempfile.TemporaryDirectory(prefix="candleray-trial-") as tmp:
            _save(Path(tmp), trainer, state, best_blob, best_meta)
            tune.report(
                {
                    **metrics,
                    "epoch": epoch + 1,
                    "steps": trainer.step,
                    # the best so far rides every report: after --resume the driver sees
                    # only new results, and the best may predate the interruption
                    "best_epoch": state["best_epoch"],
                    "best": math.nan if state["best"] is None else float(state["best"]),
                    "best_direction_accuracy": _or_nan(state.get("best_direction_accuracy")),
                },
                checkpoint=tune.Checkpoint.from_directory(tmp),
            )
