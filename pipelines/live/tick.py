"""One tick of a host: many sessions' candles in, one batched forward pass, predictions out.

A host actor wraps this loop (feeds, timers, the ModelActor calls); the logic is here so it is
tested without Ray. Inference never waits on training: ``tick`` only puts samples into the
queue; the host takes batches from it when no training call is in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from pipelines.errors import InvalidInputError
from pipelines.live.history import Candle, windows_of_many
from pipelines.live.journal import Journal
from pipelines.live.queue import TrainingQueue
from pipelines.live.session import CandleStep, LivePrediction, LiveWindow, Session


class Predicts(Protocol):
    """``serve.predictor.Predictor`` (or a fake): x (B, T, F) -> .candle (B, 5), .probs (B, 3), .version."""

    def predict(self, x: Any, batch_size: int = 256) -> Any: ...


def predict_windows(
    predictor: Predicts, windows: Sequence[LiveWindow], batch_size: int = 256
) -> Any:
    """One forward pass (in ``batch_size`` chunks) over the windows of many sessions."""
    return predictor.predict(np.stack([w.x for w in windows]), batch_size=batch_size)


def _built(session: Session, step: CandleStep) -> tuple[Any, Any]:
    if not step.backs:
        return None, None
    return windows_of_many([(session.history, step.backs)], step.window)[0]


def _end_all(begun: list[tuple[Session, CandleStep]]) -> list[tuple[Session, LiveWindow]]:
    """``end_candle`` of every session begun, their windows built in one call per kind of
    window (all of a host's sessions share the model's: one call); NumPy's per-call overhead on
    a 32-bar window was most of a session's step, and a third of a tick over 300 sessions."""
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, (session, step) in enumerate(begun):
        if step.backs:
            groups.setdefault((step.window, session.history.extra), []).append(i)
    built: dict[int, tuple[Any, Any]] = {}
    for (window, _), idx in groups.items():
        asks = [(begun[i][0].history, begun[i][1].backs) for i in idx]
        built.update(zip(idx, windows_of_many(asks, window), strict=True))
    wins = []
    for i, (session, step) in enumerate(begun):
        w = session.end_candle(step, *built.get(i, (None, None)))
        if w is not None:
            wins.append((session, w))
    return wins


def tick(
    steps: Sequence[tuple[Session, Candle]],
    predictor: Predicts,
    queue: TrainingQueue | None = None,
    journal: Journal | None = None,
    batch_size: int = 256,
) -> dict[str, LivePrediction]:
    """Feed each session its candle, predict all new windows at once, apply the rows back.

    Then journal each session's step (one transaction for all) and queue the due samples.
    Returns the predictions by session id (sessions without a window are left out).
    """
    sessions = list(dict.fromkeys(s for s, _ in steps))
    if len(sessions) != len(steps):
        raise InvalidInputError(
            "a tick takes at most one candle per session (a second one would leave the first "
            "window unpredicted); feed the later candle in the next tick"
        )
    begun: list[tuple[Session, CandleStep]] = []
    try:
        for session, candle in steps:
            step = session.begin_candle(candle)
            if step is not None:
                begun.append((session, step))
    except BaseException:
        for session, step in begun:  # a session's bad call: the others' candles still end
            session.end_candle(step, *_built(session, step))
        raise
    wins = _end_all(begun)
    out: dict[str, LivePrediction] = {}
    if wins:
        pred = predict_windows(predictor, [w for _, w in wins], batch_size)
        for i, (session, _) in enumerate(wins):
            out[session.session_id] = session.apply_prediction(
                pred.candle[i], pred.probs[i], pred.version
            )
    # journal first: a crash in between leaves requests journaled but never queued, which a
    # restore counts as dropped; the other order could train a replayed candle's sample twice.
    # A write that fails leaves the records with the sessions (the next tick writes them) and
    # raises before the samples are queued, so they are queued with the write that has them.
    if journal is not None:
        journal.write_sessions(sessions)
    if queue is not None:
        for s in sessions:
            queue.put(s.take_samples())
    return out
