"""``candleray train``: epochs over history through the ModelActor, then a held-out evaluation.

``candleray train --annotations``: epochs (``annotations.epochs``) over the samples of every
stored annotation instead (see ``pipelines.data.annotations``), checkpoints of kind
"annotations", no held-out evaluation (the marked trades are all there is).

Either way the model's MLflow run is tagged ``candleray.training_kind`` = batch or
annotations: the kind of its latest training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from conf import Config
from pipelines.errors import CandlerayError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train over history through the ModelActor (checkpoints + MLflow run)"
    )
    p.add_argument(
        "--annotations",
        action="store_true",
        help="train on the stored annotations (candleray annotate) instead of history",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.annotations:
        cmd_train_annotations(cfg)
    else:
        cmd_train(cfg, show_table=True)
    return 0


@contextlib.contextmanager
def _model_client(cfg: Config) -> Iterator[Any]:
    """A client of the ModelActor on a (possibly local) Ray cluster, closed on the way out.

    An error or Ctrl-C still ends the MLflow run (as FAILED) and the local cluster.
    """
    import ray

    from actors import ModelClient
    from pipelines.cluster import init_ray

    owns_ray = init_ray(cfg)
    client, status = None, "FAILED"
    try:
        client = ModelClient.connect(cfg)
        yield client
        status = "FINISHED"
    finally:
        if client is not None and not cfg.ray.detached:
            try:
                client.call("close", status)
            except CandlerayError as exc:
                print(f"candleray: could not close the MLflow run: {exc}", file=sys.stderr)
        if owns_ray:
            ray.shutdown()


def _tag_kind(cfg: Config, tracking: dict[str, Any], kind: str) -> bool:
    """Tag the run with the kind of its latest training; False if the run could not be tagged
    (not open yet, or the store refused: the status lines say why)."""
    from pipelines.jobs.annotations import TRAINING_KIND_TAG, tag_run

    if not tracking.get("enabled") or cfg.tracking.uri is None or not tracking.get("run_id"):
        return False
    try:
        tag_run(cfg.tracking.uri, tracking["run_id"], {TRAINING_KIND_TAG: kind})
    except CandlerayError as exc:
        print(f"candleray: could not tag the MLflow run: {exc}", file=sys.stderr)
        return False
    return True


def _tracking_lines(cfg: Config, t: dict[str, Any], note: str = "") -> list[str]:
    """Where the MLflow run stands, from the ModelActor's ``flush_tracking`` status; ``note``
    follows the run id.

    Writes still pending go on in the background (the writer keeps retrying a store that is
    down), so "pending" means "not yet", not lost.
    """
    if not t.get("enabled"):
        return []
    parts = [str(t.get("state", "unknown"))]
    pending = t.get("pending")
    if pending is None:
        parts.append("the writer did not answer")
    elif pending:
        parts.append(f"{pending} write{'s' * (pending != 1)} pending")
    for key, what in (
        ("open_failures", "failed attempt{} to open the run"),
        ("errors", "write error{}"),
        ("dropped", "write{} dropped (queue full)"),
    ):
        n = t.get(key) or 0
        if n:
            parts.append(f"{n} {what.format('s' * (n != 1))}")
    run = t.get("run_id") or "(not open yet)"
    lines = [
        f"MLflow run {run}{note} in experiment {cfg.run.name!r} at {cfg.tracking.uri} "
        f"({'; '.join(parts)})"
    ]
    if t.get("last_error") and (t.get("errors") or t.get("open_failures") or pending is None):
        lines.append(f"  last error: {t['last_error']}")
    lines += [f"  failed upload: {f}" for f in t.get("failed_uploads", [])]
    link = ui_link(cfg, cfg.run.name) if t.get("run_id") else None  # open: its experiment exists
    if link:
        lines.append(f"  MLflow UI: {link}")
    return lines


def ui_link(cfg: Config, experiment: str) -> str | None:
    """The MLflow UI link of ``experiment``'s runs (the model-training view), with how to start
    that UI when nothing serves it yet; None when the store cannot say (the status lines
    already tell why)."""
    from pipelines.tracking.experiments import experiment_link, ui_hint

    assert cfg.tracking.uri is not None  # resolved when the config was loaded
    try:
        link = experiment_link(cfg.tracking.uri, cfg.tracking.ui_url, experiment)
    except CandlerayError:
        return None
    return None if link is None else link + ui_hint(cfg.tracking.uri, cfg.tracking.ui_url)


def cmd_train_annotations(cfg: Config) -> dict[str, Any]:
    """Epochs over every stored annotation's samples; checkpoints of kind "annotations"."""
    import numpy as np

    from pipelines.data.labels import ACTIONS
    from pipelines.jobs.annotations import annotation_split
    from pipelines.jobs.training import train_split

    got = annotation_split(cfg)  # refused before Ray starts when there is nothing to train
    ds, epochs = got.split.train, cfg.annotations.epochs
    counts = np.bincount(ds.y_action, minlength=len(ACTIONS))
    print(
        f"annotations: {got.annotations} trades on {len(ds.symbols)} symbol(s), {len(ds)} "
        f"samples ({', '.join(f'{n} {a}' for a, n in zip(ACTIONS, counts, strict=True))})"
        + (f"; {len(got.samples.skipped)} bar(s) gave no sample" if got.samples.skipped else "")
    )
    with _model_client(cfg) as client:
        bar, update = _progress_bar(-(-len(ds) // cfg.train.batch_size), epochs)
        t0 = time.time()
        try:
            results = train_split(
                client, got.split, cfg, epochs=epochs, progress=update, kind="annotations"
            )
        finally:
            bar.close()
        train_s = time.time() - t0
        ckpt = client.call("save_checkpoint", "annotations")
        tracking = client.call("flush_tracking")
        tagged = _tag_kind(cfg, tracking, "annotations")
        metrics = client.call("metrics")
    steps = sum(r.steps for r in results)
    last = results[-1].metrics
    print(
        f"trained {steps} steps ({epochs} epochs) on annotations in {train_s:.1f}s, model at step "
        f"{metrics['steps']}; last epoch: loss {last['total_loss']:.3f}, action acc "
        f"{last['action_accuracy']:.2f}"
    )
    print(f"checkpoint: {ckpt['path']}")
    for line in _tracking_lines(cfg, tracking, " tagged training_kind=annotations" * tagged):
        print(line)
    return {"epochs": results, "checkpoint": ckpt, "tracking": tracking, "samples": len(ds)}


def _progress_bar(total_batches: int, epochs: int) -> tuple[Any, Any]:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(
        total=total_batches * epochs,
        unit="batch",
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not tty,
    )

    def update(epoch: int, done: int, m: dict[str, float]) -> None:
        """``m``: the epoch's per-sample means so far (``train_split``), whole at its end."""
        if not tty and done == total_batches:  # no terminal: one line per epoch
            print(
                f"epoch {epoch + 1}/{epochs} means: loss {m['total_loss']:.3f} "
                f"dir_acc {m['candle_accuracy']:.2f} action_acc {m['action_accuracy']:.2f}",
                file=sys.stderr,
            )
        bar.n = epoch * total_batches + done
        bar.set_description(f"epoch {epoch + 1}/{epochs}")
        bar.set_postfix(
            loss=f"{m['total_loss']:.3f}",
            dir_acc=f"{m['candle_accuracy']:.2f}",
            act_acc=f"{m['action_accuracy']:.2f}",
            refresh=False,
        )
        bar.refresh()

    return bar, update


def cmd_train(cfg: Config, *, show_table: bool = False) -> dict[str, Any]:
    from pipelines.jobs.training import prepare

    t0 = time.time()
    split = prepare(cfg)
    print(
        f"data: {len(split.train.symbols)} symbols, {len(split.train)} training windows, "
        f"{len(split.holdout)} held-out windows ({time.time() - t0:.1f}s)"
    )
    print(_cut_line(split))
    with _model_client(cfg) as client:
        return _train_and_evaluate(client, cfg, split, show_table)


def _train_and_evaluate(client: Any, cfg: Config, split: Any, show_table: bool) -> dict[str, Any]:
    from actors import spec_from_config
    from pipelines.jobs.evaluation import evaluate_split
    from pipelines.jobs.training import train_split
    from serve.predictor import Predictor

    start = client.call("metrics")
    if start.get("restored_from"):
        print(f"resuming {cfg.run.name!r} from checkpoint step {start['restored_from']}")
    n_batches = -(-len(split.train) // cfg.train.batch_size)
    bar, update = _progress_bar(n_batches, cfg.train.epochs)
    t1 = time.time()
    try:
        epochs = train_split(client, split, cfg, progress=update)
    finally:
        bar.close()
    train_s = time.time() - t1
    ckpt = client.call("save_checkpoint", "batch")
    predictor = Predictor(spec_from_config(cfg), "cpu")
    predictor.refresh(client)
    table = evaluate_split(predictor, split)
    overall = table.loc["ALL"]
    client.call(
        "log_evaluation",
        {f"holdout_{k}": float(v) for k, v in overall.items()},
        artifacts={"evaluation/holdout.json": json.loads(table.to_json(orient="index"))},
    )
    tracking = client.call("flush_tracking")
    _tag_kind(cfg, tracking, "batch")
    metrics = client.call("metrics")
    samples = sum(e.steps for e in epochs) * cfg.train.batch_size
    print(
        f"trained {sum(e.steps for e in epochs)} steps in {train_s:.1f}s "
        f"({samples / max(train_s, 1e-9):.0f} samples/s), model at step {metrics['steps']}, trend {metrics['trend']}"
    )
    print(f"checkpoint: {ckpt['path']}")
    for line in _tracking_lines(cfg, tracking):
        print(line)
    if show_table:
        _print_table(table, split.cut)
    return {
        "table": table,
        "epochs": epochs,
        "checkpoint": ckpt,
        "tracking": tracking,
        "ranges": split.ranges,
        "cut": split.cut,
    }


def _cut_line(split: Any) -> str:
    """The hold-out cut, and the symbols that lie wholly on one side of it."""
    text = (
        f"hold-out cut {split.cut}: one time for all symbols; held-out windows end at or after "
        "it, training windows' labels close by it"
    )
    only_train = [k for k, r in split.ranges.items() if not r["holdout_start"]]
    only_held = [k for k, r in split.ranges.items() if not r["train_end"]]
    if only_train:
        text += f"\n  training only (all their windows end before the cut): {', '.join(only_train)}"
    if only_held:
        text += f"\n  held out only (no label closes before the cut): {', '.join(only_held)}"
    return text


def _print_table(table: Any, cut: str) -> None:
    cols = [
        ("n", "windows", "{:.0f}"),
        ("dir_acc", "dir acc", "{:.3f}"),
        ("dir_acc_persistence", "persist.", "{:.3f}"),
        ("action_acc", "action acc", "{:.3f}"),
        ("action_acc_hold", "always-HOLD", "{:.3f}"),
        ("action_acc_majority", "majority", "{:.3f}"),
        ("close_mae", "close MAE", "{:.3f}"),
        ("close_mae_persistence", "persist.", "{:.3f}"),
        ("close_mae_nochange", "no-change", "{:.3f}"),
    ]
    width = max(len(s) for s in table.index) + 2
    print(
        f"\nHeld-out evaluation, windows ending at or after {cut} "
        "(close MAE in units of each window's volatility; lower is better)"
    )
    print("symbol".ljust(width) + "".join(h.rjust(12) for _, h, _ in cols))
    for sym, row in table.iterrows():
        print(sym.ljust(width) + "".join(f.format(row[c]).rjust(12) for c, _, f in cols))
