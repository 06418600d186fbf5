"""A sweep on Ray Tune: the datasets put once, the Tuner, progress lines, MLflow, the table.

Tune runs in the driver; its callbacks (``SweepCallback``) turn trial events into MLflow child
runs (``pipelines.sweep.mlflow_runs``) and progress lines. Tune pickles its run config (the
callbacks too) into the sweep folder for ``--resume``, so the callback holds only the sweep id
and finds the live ``Sweep`` of this process through ``_LIVE``.

Ctrl-C: Tune's own SIGINT handler ends the tuning loop, stops every trial and saves the state
a resume needs; SIGTERM is handed to that handler too. Trials still running are then
"interrupted" (child runs KILLED) and the parent run ends KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import tune

from conf import Config, config_from_dict, to_dict
from pipelines.sweep import mlflow_runs as mr
from pipelines.sweep.space import (
    Space,
    dataset_key,
    parse_space,
    trial_name,
    tune_space,
    with_values,
)
from pipelines.sweep.state import (
    SweepState,
    TrialRow,
    check_metric,
    check_storage,
    latest_unfinished,
    new_sweep_folder,
    record_result,
)
from pipelines.sweep.trial import BEST_DIR, METRICS, run_trial

log = logging.getLogger(__name__)

# Tune's own output: its boxed tables and its warning that a trial checkpointing every epoch
# snapshots the experiment often (each epoch's checkpoint is what --resume needs) are noise
# beside the sweep's progress lines; so is the note that TensorBoard files need tensorboardX
# (MLflow holds the results)
_QUIET_LOGGERS = ("ray.tune.logger.tensorboardx", "ray.tune.callback")
_TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
_LIVE: dict[str, Sweep] = {}


FINAL = ("finished", "stopped early", "failed")


class SweepCallback(tune.Callback):
    """Tune's trial events, handed to this process's live ``Sweep`` (see the module doc)."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id

    def _sweep(self) -> Sweep | None:
        return _LIVE.get(self.sweep_id)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if sweep := self._sweep():
            sweep.trials = trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if sweep := self._sweep():
            sweep.trials = trials
            sweep.trial_start(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if sweep := self._sweep():
            sweep.trial_result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if sweep := self._sweep():
            sweep.trial_complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if sweep := self._sweep():
            sweep.trial_error(trial)


class Sweep:
    def __init__(
        self,
        cfg: Config,
        space: Space,
        state: SweepState,
        *,
        say: Callable[[str], None],
    ) -> None:
        self.cfg, self.space, self.state, self.say = cfg, space, state, say
        s = cfg.sweep
        self.metric, self.mode, self.epochs = s.metric, s.mode, cfg.train.epochs
        self.rows: dict[str, TrialRow] = {}
        self.trials: list[Any] = []
        self.runs = mr.SweepRuns(cfg, state.sweep_id, state.parent_run_id)
        self.t0 = time.time()

    # -- Tune events (SweepCallback) -----------------------------------------------------
    def _row(self, trial: Any) -> TrialRow:
        row = self.rows.get(trial.trial_id)
        if row is None:
            values = {k: trial.config[k] for k in trial.config}
            row = TrialRow(trial.trial_id, trial_name(values), values)
            self.rows[trial.trial_id] = row
        return row

    def trial_start(self, trial: Any) -> None:
        row = self._row(trial)
        row.status, row.started = "running", time.time()
        child = self.runs.child(trial.trial_id, row.name, with_values(self.cfg, row.values))
        row.run_id = child.run_id
        self.say(f"trial {trial.trial_id} {row.name}: started (child run {child.run_id})")

    def trial_result(self, trial: Any, result: dict) -> None:
        row = self._row(trial)
        epoch = int(result.get("epoch", 0))
        if row.first_epoch_s is None and row.started is not None:
            row.first_epoch_s = time.time() - row.started
        figures = {k: float(result[k]) for k in METRICS if k in result}
        self.runs.log_epoch(trial.trial_id, figures, epoch)
        value = record_result(row, result, self.metric)
        self.say(
            f"trial {trial.trial_id} {row.name}: epoch {epoch}/{self.epochs} "
            f"{self.metric} {value:.4f}"
        )
        self.say(self.summary())

    def trial_complete(self, trial: Any) -> None:
        row = self._row(trial)
        if row.epochs < self.epochs:
            row.status = "stopped early"
            row.reason = (
                f"ASHA stopped it after epoch {row.epochs}: its {self.metric} was not in the "
                f"best 1/{self.cfg.sweep.reduction_factor:g} of the trials at that rung"
            )
            status, tags = "KILLED", {mr.STATUS_TAG: "stopped early", mr.REASON_TAG: row.reason}
        else:
            row.status, status, tags = "finished", "FINISHED", {mr.STATUS_TAG: "finished"}
        self._log_checkpoint(trial, row)
        self.runs.end_child(trial.trial_id, status, tags)
        self.say(f"trial {trial.trial_id} {row.name}: {row.status} after {row.epochs} epoch(s)")
        self.say(self.summary())

    def trial_error(self, trial: Any) -> None:
        row = self._row(trial)
        row.status, row.error = "failed", _error_line(trial)
        tags = {mr.STATUS_TAG: "failed", mr.ERROR_TAG: row.error[:4000]}
        if row.run_id is None:  # failed before it started: give it its run all the same
            self.runs.child(trial.trial_id, row.name, with_values(self.cfg, row.values))
        self.runs.end_child(trial.trial_id, "FAILED", tags)
        self.say(f"trial {trial.trial_id} {row.name}: FAILED: {row.error}")
        self.say(self.summary())

    def _log_checkpoint(self, trial: Any, row: TrialRow) -> None:
        ckpt = trial.checkpoint
        if ckpt is None or row.run_id is None:
            return
        with ckpt.as_directory() as d:
            if (Path(d) / BEST_DIR).is_dir():
                self.runs.log_checkpoint(row.run_id, str(Path(d) / BEST_DIR))

    # -- reading -------------------------------------------------------------------------
    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        total = max(self.cfg.sweep.trials * self.space.grid_size(), len(self.rows))
        counts["pending"] = counts.get("pending", 0) + total - len(self.rows)
        parts = [
            f"{counts.get(k, 0)} {k}"
            for k in ("running", "finished", "stopped early", "failed", "pending")
        ]
        best = self.best()
        tail = f"; best so far {self.metric} {best.best:.4f} ({best.name})" if best else ""
        return f"[{time.time() - self.t0:.0f}s] trials: {', '.join(parts)}{tail}"

    def best(self) -> TrialRow | None:
        scored = [r for r in self.rows.values() if r.best is not None and math.isfinite(r.best)]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda r: r.best)  # type: ignore[arg-type, return-value]

    def table(self) -> list[dict[str, Any]]:
        sign = 1 if self.mode == "min" else -1
        rows = sorted(
            self.rows.values(),
            key=lambda r: (r.best is None, sign * (r.best if r.best is not None else 0.0)),
        )
        return [asdict(r) for r in rows]

    # -- after the Tuner -----------------------------------------------------------------
    def _adopt_finished(self) -> None:
        """Rows for trials that ended before a resume (no events this time): from Tune's state."""
        for trial in self.trials:
            if trial.trial_id in self.rows:
                continue
            row = self._row(trial)
            last = trial.last_result or {}
            if last:
                record_result(row, last, self.metric)
            found = self.runs.find_child(trial.trial_id)
            if found is not None:
                row.run_id = found.info.run_id
                status = found.data.tags.get(mr.STATUS_TAG, "")
                row.status = status or row.status
                row.error = found.data.tags.get(mr.ERROR_TAG, "")
                row.reason = found.data.tags.get(mr.REASON_TAG, "")
                history = self._metric_history(row.run_id)
                if row.best is None and row.best_epoch in history:
                    row.best = history[row.best_epoch]

    def _metric_history(self, run_id: str) -> dict[int, float]:
        from pipelines.tracking import call_mlflow

        got = call_mlflow(
            self.runs.uri,
            "get metric history",
            lambda: self.runs.client.get_metric_history(run_id, self.metric),
        )
        return {int(m.step): float(m.value) for m in got}

    def finish(self) -> dict[str, Any]:
        self._adopt_finished()
        for t in self.trials:  # failed as the loop ended, before Tune told its callbacks
            if t.status == "ERROR" and self._row(t).status != "failed":
                self.trial_error(t)
        # Tune's cleanup after Ctrl-C leaves its trials TERMINATED in memory (the saved state
        # a resume reads says RUNNING), so what ended is what this sweep saw end
        for t in self.trials:
            if self._row(t).status not in FINAL:
                self._row(t).status = "interrupted"
        ended = sum(r.status in FINAL for r in self.rows.values())
        # trials Tune had not created yet count too: the sweep has all of them or was stopped
        interrupted = ended < self.cfg.sweep.trials * self.space.grid_size()
        best = self.best()
        tags: dict[str, str] = {}
        version = None
        if best is not None and not interrupted:
            tags = {mr.BEST_TRIAL_TAG: best.trial_id, mr.BEST_RUN_TAG: best.run_id or ""}
            trial = next((t for t in self.trials if t.trial_id == best.trial_id), None)
            if trial is not None and trial.checkpoint is not None and best.run_id:
                with trial.checkpoint.as_directory() as d:
                    version = self.runs.register_best(best.run_id, str(Path(d) / BEST_DIR))
        table = self.table()
        self.runs.finish("KILLED" if interrupted else "FINISHED", table, tags)
        self.state.status = "interrupted" if interrupted else "finished"
        self.state.save()
        return {
            "sweep": self.state.sweep_id,
            "path": self.state.path,
            "experiment": self.runs.experiment,
            "parent_run_id": self.runs.parent_run_id,
            "metric": self.metric,
            "mode": self.mode,
            "interrupted": interrupted,
            "best": None if best is None or interrupted else asdict(best),
            "registered": None
            if version is None
            else {"model": mr.model_name(self.cfg), "version": version, "alias": "best"},
            "trials": table,
        }


def _error_line(trial: Any) -> str:
    """The last line of a failed trial's error (``Type: message``), without Ray's log context.

    Tune writes the error beside the driver's copy of the trial first (``error_file``); the
    copy in ``sweep.storage`` (``get_error``) follows at its next sync."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    if not text.strip():
        with contextlib.suppress(Exception):
            text = trial.get_error() or ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    line = (named or lines or ["the trial failed; its error was not recorded"])[-1]
    return re.sub(r"\s+job_id=\S+.*$", "", line)


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM goes to whatever handles SIGINT (Tune's graceful stop while it runs)."""
    if sys.platform == "win32":
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, forward)
    before = signal.getsignal(signal.SIGINT)  # Tune leaves its handler in place after a run
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, before)


def _tuner(cfg: Config, space: Space, state: SweepState, datasets: dict[str, Any], resume: bool):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.sweep
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=cfg,
            datasets=datasets,
            metric=s.metric,
            mode=s.mode,
            threads=max(1, int(s.trial_num_cpus)),
        ),
        {"cpu": s.trial_num_cpus, "gpu": s.trial_num_gpus, **s.trial_resources},
    )
    if resume:
        return tune.Tuner.restore(
            state.path, trainable, resume_unfinished=True, resume_errored=False
        )
    scheduler: Any = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=max(1, cfg.train.epochs),
            grace_period=min(s.grace_period, max(1, cfg.train.epochs)),
            reduction_factor=s.reduction_factor,
        )
        if s.scheduler == "asha"
        else FIFOScheduler()
    )
    path = Path(state.path)
    return tune.Tuner(
        trainable,
        param_space=tune_space(space),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            scheduler=scheduler,
            num_samples=s.trials,
            max_concurrent_trials=s.max_concurrent or None,
            # a finished trial's process takes the next trial: no new process, no torch import
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            verbose=0,
            callbacks=[SweepCallback(state.sweep_id)],
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def prepare(cfg: Config, space: Space, say: Callable[[str], None]) -> dict[str, Any]:
    """Build each dataset the space needs once and put it in the object store once."""
    import ray

    from pipelines.jobs.training import prepare as build

    refs = {}
    for combo in space.dataset_combos():
        t = time.time()
        split = build(with_values(cfg, combo))
        refs[dataset_key(combo)] = ray.put(split)
        say(
            f"data{' ' + dataset_key(combo) if combo else ''}: {len(split.train)} training, "
            f"{len(split.holdout)} held-out windows ({time.time() - t:.1f}s)"
        )
    return refs


def run_sweep(
    cfg: Config,
    space: Space | None,
    *,
    resume: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or ``resume``) a sweep; Ray must be initialised. Returns the result dict."""
    if resume:
        folder = latest_unfinished(cfg)
        state = SweepState.load(folder)
        cfg = config_from_dict(state.base)
        space = parse_space(state.space, state.space_file, cfg)
        say(f"resuming sweep {state.sweep_id} ({folder}); its config and space as started")
    else:
        assert space is not None
        check_storage(cfg.sweep.storage)
        folder = new_sweep_folder(cfg)
        sweep_id = folder.name
        state = SweepState(sweep_id, str(folder), space.to_dict(), space.source, to_dict(cfg))
    check_metric(cfg.sweep.metric)
    for key, value in _TUNE_ENV.items():
        os.environ.setdefault(key, value)  # a variable the user set wins
    if not logging.getLogger().isEnabledFor(logging.INFO):  # the command's -v shows them
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    datasets = prepare(cfg, space, say)
    sweep = Sweep(cfg, space, state, say=say)
    _LIVE[state.sweep_id] = sweep
    try:
        if state.parent_run_id is None:
            sweep.runs.log_sweep(mr.sweep_params(cfg, space), cfg, space.to_dict())
            state.parent_run_id = sweep.runs.parent_run_id
        state.status = "running"
        state.save()
        tuner = _tuner(cfg, space, state, datasets, resume)
        with _sigterm_as_sigint():
            tuner.fit()
        return sweep.finish()
    except BaseException as exc:
        # a failure of the sweep itself (not of a trial), or a stop before Tune ran: end the
        # runs, keep the state for --resume
        state.status = "interrupted"
        state.save()
        with contextlib.suppress(Exception):
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            sweep.runs.finish(status, sweep.table(), {})
        raise
    finally:
        _LIVE.pop(state.sweep_id, None)
