"""What a sweep keeps between runs of the command: its state file (for ``--resume``), the rows
of its result table, and the checks of its settings that need the trial's metric names."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conf import Config
from pipelines.errors import ConfigError, NotFoundError
from pipelines.sweep.trial import METRICS

SWEEP_FILE = "candleray_sweep.json"


@dataclass
class TrialRow:
    trial_id: str
    name: str
    values: dict[str, Any]
    status: str = "pending"  # running | finished | stopped early | failed | interrupted
    epochs: int = 0
    best: float | None = None
    best_epoch: int = 0
    direction_accuracy: float | None = None  # at the best epoch
    run_id: str | None = None
    reason: str = ""
    error: str = ""
    started: float | None = None  # time.time() of the trial's start
    first_epoch_s: float | None = None  # start to first reported epoch


@dataclass
class SweepState:
    """What ``--resume`` needs, kept in the sweep folder beside Tune's own state."""

    sweep_id: str
    path: str
    space: dict[str, Any]
    space_file: str
    base: dict[str, Any]
    parent_run_id: str | None = None
    status: str = "running"  # running | interrupted | finished

    def save(self) -> None:
        Path(self.path, SWEEP_FILE).write_text(json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, folder: Path) -> SweepState:
        return cls(**json.loads((folder / SWEEP_FILE).read_text()))


def record_result(row: TrialRow, result: dict[str, Any], metric: str) -> float:
    """Take one epoch's report into ``row``; returns the epoch's ``metric``. The trial's best
    so far comes with every report (value and epoch), so a trial resumed after its best epoch
    keeps that best although the driver never saw that epoch's result this run."""
    epoch = int(result.get("epoch", 0))
    row.epochs = epoch
    value = float(result.get(metric, math.nan))
    best = result.get("best")
    if best is not None and math.isfinite(float(best)):
        row.best, row.best_epoch = float(best), int(result.get("best_epoch", epoch))
        acc = result.get("best_direction_accuracy")
        row.direction_accuracy = None if acc is None or not math.isfinite(acc) else float(acc)
    elif "best_epoch" in result:  # a report from before "best" was sent: only the epoch
        row.best_epoch = int(result["best_epoch"])
        if row.best_epoch == epoch:
            row.best, row.direction_accuracy = value, result.get("holdout/direction_accuracy")
    return value


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(
            f"sweep.metric={metric!r} is not a figure the trials report; use one of "
            f"{', '.join(METRICS)} (e.g. --metric holdout/total_loss --mode min)"
        )


def check_storage(storage: str) -> None:
    """A URI is refused: the sweep keeps its folder and state file through ``pathlib``, and
    ``Path("s3://b/x")`` is the local folder ``s3:/b/x`` under the working directory, so an
    s3:// storage would silently have written to the local disk."""
    if "://" in storage:
        raise ConfigError(
            f"sweep.storage={storage!r}: a sweep keeps its trials in a local or mounted folder; "
            "URIs (s3://...) are not supported yet. Set sweep.storage to a path (relative to "
            "run.home, or on a multi-node cluster a folder every node mounts, e.g. NFS)"
        )


def new_sweep_folder(cfg: Config) -> Path:
    """``<run.name>-<date>-<time>``; a second sweep started in the same second gets a short
    random suffix instead of crashing on the existing folder."""
    sweep_id = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(cfg.sweep.storage) / sweep_id
    for _ in range(20):
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            folder = Path(cfg.sweep.storage) / f"{sweep_id}-{secrets.token_hex(2)}"
    raise ConfigError(f"sweep.storage={cfg.sweep.storage}: could not create a new sweep folder")


def latest_unfinished(cfg: Config) -> Path:
    """The newest sweep of ``run.name`` under ``sweep.storage`` that did not finish."""
    check_storage(cfg.sweep.storage)
    root = Path(cfg.sweep.storage)
    # exactly <name>-<date>-<time>[-<suffix>]: a plain glob of "demo-*" would match demo-x's sweeps
    own = re.compile(re.escape(cfg.run.name) + r"-\d{8}-\d{6}(?:-[0-9a-f]{4})?")
    found = sorted(
        (
            p
            for p in (root.iterdir() if root.is_dir() else ())
            if own.fullmatch(p.name) and (p / SWEEP_FILE).exists()
        ),
        key=lambda p: p.name,
    )
    for p in reversed(found):
        state = SweepState.load(p)
        if state.status != "finished" and state.base.get("run", {}).get("name") == cfg.run.name:
            return p
    raise NotFoundError(
        f"--resume: no unfinished sweep of run.name={cfg.run.name!r} under {root}; "
        "start one with candleray sweep --space FILE"
    )
