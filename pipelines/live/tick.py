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
from pipelines.live.history import Candle
from pipelines.live.journal import Journal
from pipelines.live.queue import TrainingQueue
from pipelines.live.session import LivePrediction, LiveWindow, Session


class Predicts(Protocol):
    """``serve.predictor.Predictor`` (or a fake): x (B, T, F) -> .candle (B, 5), .probs (B, 3), .version."""

    def predict(self, x: Any, batch_size: int = 256) -> Any: ...


def predict_windows(
    predictor: Predicts, windows: Sequence[LiveWindow], batch_size: int = 256
) -> Any:
    """One forward pass (in ``batch_size`` chunks) over the windows of many sessions."""
    return predictor.predict(np.stack([w.x for w in windows]), batch_size=batch_size)


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
    wins: list[tuple[Session, LiveWindow]] = []
    for session, candle in steps:
        w = session.on_candle(candle)
        if w is not None:
            wins.append((session, w))
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
