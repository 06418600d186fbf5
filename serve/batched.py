"""What a predictor replica does, as plain code (no Serve): check requests, predict a batch of
requests in one forward pass, and follow the ModelActor's published weights.

The Serve deployment (``serve/predictor_app.py``) only wires these to ``@serve.batch``,
``reconfigure()`` and a background task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipelines.errors import CandlerayError, InvalidInputError
from pipelines.model.network import ModelSpec
from pipelines.model.trainer import check_batch
from serve.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowPrediction:
    """The answer for one window. ``candle`` is the normalised next candle (o, h, l, c, v
    in units of the window's volatility; ``serve.windows.interpret`` turns it into prices),
    ``probs`` are HOLD / BUY / SELL. ``version``/``generation`` name the weights used;
    ``replica``, ``forward_pass`` and ``batch_windows`` say which forward pass answered."""

    candle: tuple[float, ...]
    probs: tuple[float, float, float]
    version: int
    generation: str | None
    replica: str
    forward_pass: int
    batch_windows: int


def check_request(spec: ModelSpec, windows: Any, max_bytes: int) -> np.ndarray:
    """One request's windows → float32 (B, T, F); InvalidInputError if the model cannot take it.

    Checked per request, before batching, so a bad request fails alone and never the
    batch it would have joined.
    """
    try:
        x = np.asarray(windows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"windows must be numbers shaped (B, {spec.window}, {spec.n_features}): {exc}"
        ) from exc
    if x.nbytes > max_bytes:
        raise InvalidInputError(
            f"request holds {x.nbytes} bytes of windows ({x.shape[0]} windows); the limit is "
            f"{max_bytes} (serve.max_request_bytes): send fewer windows per request"
        )
    check_batch(spec, x)
    return x


def predict_batch(
    predictor: Predictor, requests: Sequence[np.ndarray], replica: str, forward_pass: int
) -> list[list[WindowPrediction]]:
    """Every request's windows through ONE forward pass; answers split back per request."""
    x = np.concatenate(requests)  # (sum B_i, T, F)
    p = predictor.predict(x, batch_size=len(x))
    out: list[list[WindowPrediction]] = []
    start = 0
    for r in requests:
        rows = range(start, start + len(r))
        out.append(
            [
                WindowPrediction(
                    tuple(p.candle[i].tolist()),
                    (float(p.probs[i, 0]), float(p.probs[i, 1]), float(p.probs[i, 2])),
                    p.version,
                    predictor.generation,
                    replica,
                    forward_pass,
                    len(x),
                )
                for i in rows
            ]
        )
        start += len(r)
    return out


class WeightSource(Protocol):
    """Where published weights come from (the ModelActor; a fake in tests)."""

    async def version(self) -> tuple[str | None, int]: ...

    async def snapshot(self) -> dict[str, Any]:
        """{generation, version, spec (dict), state (state dict)}."""
        ...


class WeightFollower:
    """Holds the predictor a replica serves and swaps in each newly published version.

    A new version is loaded into a fresh ``Predictor`` in a worker thread and then the
    reference is swapped whole: a batch already running keeps the predictor it started
    with, so every answer names exactly the weights that made it, and requests never
    wait for a load.
    """

    def __init__(self, spec: ModelSpec, device: str, source: WeightSource) -> None:
        self.spec, self.device, self.source = spec, device, source
        self.predictor = Predictor(spec, device)
        self.last_error: str | None = None
        self.loaded_at: float | None = None  # time.time() of the last swap

    def _build(self, state: dict[str, torch.Tensor], version: int, generation: str) -> Predictor:
        p = Predictor(self.spec, self.device)
        p.load(state, version, generation)
        return p

    async def refresh(self) -> bool:
        """Load the newest published weights if they differ from ours. True if swapped."""
        current = (self.predictor.generation, self.predictor.version)
        if await self.source.version() == current:
            return False
        snap = await self.source.snapshot()
        if snap["spec"] != self.spec.to_dict():
            raise CandlerayError(
                f"the ModelActor publishes a model of spec {snap['spec']}, but this predictor "
                f"was built for {self.spec.to_dict()}; deploy the predictor with the config "
                "the ModelActor runs (model.*, features.window, data.extra_timeframes)"
            )
        self.predictor = await asyncio.to_thread(
            self._build, snap["state"], snap["version"], snap["generation"]
        )
        self.loaded_at = time.time()
        log.info("serving weights version %s (%s)", snap["version"], snap["generation"])
        return True

    async def follow(self, poll_s: float) -> None:
        """Refresh every ``poll_s`` seconds until cancelled; a failed poll keeps the old weights.

        The actor may be restarting or busy past its deadline; that is reported (logged
        once per distinct error, kept in ``last_error`` for health checks) and retried on
        the next poll, while requests go on with the weights already loaded.
        """
        while True:
            try:
                await self.refresh()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one poll; the next poll retries
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.last_error:
                    log.warning(
                        "could not refresh weights, serving version %s: %s",
                        self.predictor.version,
                        msg,
                    )
                self.last_error = msg
            await asyncio.sleep(poll_s)
