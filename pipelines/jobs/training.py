"""Batch training through the ModelActor: data → split → epochs of pipelined calls."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import ray

from conf import Config
from pipelines.data.dataset import Split, build_split
from pipelines.data.sources import SymbolSpec, gap_report, load_candles, parse_symbol
from pipelines.errors import ActorCallTimeout, CandlerayError, PartialTrainingError
from pipelines.model.trainer import mean_metrics

log = logging.getLogger(__name__)


def load_all(cfg: Config, *, exchange: object | None = None) -> dict[SymbolSpec, pd.DataFrame]:
    """Candles for every configured symbol; gaps are reported (logged), never filled.

    One ccxt exchange object per exchange id serves all its symbols, so its markets are
    loaded once (``exchange``, if given, serves every exchange symbol: tests inject one).
    """
    exchanges: dict[str, object] = {}
    out = {}
    for text in cfg.data.symbols:
        spec = parse_symbol(text, cfg.data.timeframe)
        ex = exchange
        if ex is None and spec.source not in ("sample", "synthetic"):
            from pipelines.data.sources.ccxt_source import build_exchange

            if spec.source not in exchanges:
                exchanges[spec.source] = build_exchange(spec.source, cfg.data.ccxt)
            ex = exchanges[spec.source]
        out[spec] = load_candles(spec, cfg.data, exchange=ex)
        log.info(gap_report(out[spec], spec))
    return out


@dataclass
class EpochResult:
    epoch: int
    steps: int
    metrics: dict[str, float]


def train_split(
    client: Any,
    split: Split,
    cfg: Config,
    *,
    epochs: int | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    kind: str = "batch",
) -> list[EpochResult]:
    """Run ``epochs`` shuffled passes over ``split.train`` through the actor.

    ``kind`` names the training in its checkpoints ("batch"; "annotations" for marked trades).

    The training set goes into the object store once; each call trains
    ``train.batches_per_call`` batches by index. Two calls stay in flight, so the actor
    never idles between calls. ``progress(epoch, batches_done, epoch_metrics)`` is called
    as each call returns, with the per-sample means of the epoch so far (at its last call, the
    epoch's means: what a user reads, not the last batch's noisy figures). Epoch metrics are
    per-sample means.

    If a call fails, the call still in flight is waited for, and the error says how many
    steps this run applied (PartialTrainingError when any were), so no one retries blindly.
    """
    data_ref = ray.put(split.train)
    client.call(
        "set_data_window",
        {
            "symbols": list(split.train.symbols),
            "holdout_cut": split.cut,  # one time for all symbols (build_split)
            "ranges": split.ranges,
            "train_windows": len(split.train),
            "holdout_windows": len(split.holdout),
        },
    )
    bs, per_call = cfg.train.batch_size, cfg.train.batches_per_call
    rng = np.random.default_rng(cfg.run.seed)
    results: list[EpochResult] = []
    for epoch in range(cfg.train.epochs if epochs is None else epochs):
        perm = rng.permutation(len(split.train))
        chunks = [perm[s : s + bs * per_call] for s in range(0, len(perm), bs * per_call)]
        pending: deque[ray.ObjectRef] = deque()
        done: list[dict[str, float]] = []
        # one per-sample mean per call, its counts summed: their mean is the epoch's so far,
        # at a cost per call that grows with the calls, not the steps
        calls: list[dict[str, float]] = []

        def collect(
            ref: ray.ObjectRef, epoch: int = epoch, done: list = done, calls: list = calls
        ) -> None:
            ms = client.wait(ref, "train_samples")
            done.extend(ms)
            calls.append(mean_metrics(ms))
            if progress:
                progress(epoch, len(done), mean_metrics(calls))

        try:
            for chunk in chunks:
                pending.append(client.submit("train_samples", data_ref, chunk, bs, kind))
                if len(pending) == 2:
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        except CandlerayError as exc:
            earlier = sum(r.steps for r in results)
            _stopped(client, exc, pending, epoch, earlier + len(done))
            raise
        mean = mean_metrics(done)
        results.append(EpochResult(epoch, len(done), mean))
        log.info("epoch %d: %s", epoch, mean)
    return results


def _stopped(client: Any, exc: CandlerayError, pending: deque, epoch: int, finished: int) -> None:
    """After a failed call: wait for the one still in flight, then raise PartialTrainingError
    with the steps applied so far, if any (else return and the caller re-raises ``exc``)."""
    applied = finished + getattr(exc, "steps_applied", 0)
    unsure = isinstance(exc, ActorCallTimeout)  # that call may still be training
    while pending:
        try:
            applied += len(client.wait(pending.popleft(), "train_samples"))
        except CandlerayError as other:
            applied += getattr(other, "steps_applied", 0)
            unsure = unsure or isinstance(other, ActorCallTimeout)
            log.warning("a train_samples call in flight failed too: %s", other)
    if applied == 0:
        return
    raise PartialTrainingError(
        f"batch training stopped in epoch {epoch + 1}: {type(exc).__name__}: {exc}. "
        f"{'At least ' if unsure else ''}{applied} step(s) of this run were applied and stay "
        "applied (the actor's metrics()['steps'] and weights version are the truth); "
        "a rerun trains from there, it does not undo them",
        steps_applied=applied,
    ) from exc


def prepare(cfg: Config, *, exchange: object | None = None) -> Split:
    return build_split(load_all(cfg, exchange=exchange), cfg)
