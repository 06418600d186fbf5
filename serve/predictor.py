"""A predictor: its own copy of the model, refreshed from the ModelActor's published snapshots.

Inference never touches the training weights. ``refresh()`` asks the actor for its newest
(generation, version) — a read that does not wait behind training — and loads the state dict
from the object store only when it changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.data.labels import ACTIONS
from pipelines.model.network import CandleTransformer, ModelSpec, resolve_device
from pipelines.model.trainer import check_batch


@dataclass(frozen=True)
class Prediction:
    candle: np.ndarray  # (B, 5) normalised next candle
    probs: np.ndarray  # (B, 3) HOLD / BUY / SELL
    version: int

    @property
    def actions(self) -> list[str]:
        return [ACTIONS[i] for i in self.probs.argmax(axis=1)]


class Predictor:
    def __init__(self, spec: ModelSpec, device: str = "auto") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.model = CandleTransformer(spec).to(self.device).eval()
        self.generation: str | None = None
        self.version = -1

    def load(
        self, state: dict[str, torch.Tensor], version: int, generation: str | None = None
    ) -> None:
        self.model.load_state_dict(state)
        self.version, self.generation = version, generation

    def refresh(self, client: Any) -> bool:
        """Load the actor's newest snapshot if it differs from ours. True if weights changed."""
        import ray

        if client.call("weights_version") == (self.generation, self.version):
            return False
        snap = client.call("weights_snapshot")
        self.load(ray.get(snap["ref"]), snap["version"], snap["generation"])
        return True

    @torch.no_grad()
    def predict(self, x: Any, batch_size: int = 256) -> Prediction:
        """x (B, T, F) windows → Prediction. Bad shapes or values raise InvalidInputError.

        On CPU a few hundred windows per pass is fastest (larger batches fault in fresh pages).
        """
        check_batch(self.spec, x)
        xs = np.asarray(x, dtype=np.float32)
        cands, probs = [], []
        for s in range(0, len(xs), batch_size):
            c, logits = self.model(torch.from_numpy(xs[s : s + batch_size]).to(self.device))
            cands.append(c.float().cpu().numpy())
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return Prediction(np.concatenate(cands), np.concatenate(probs), self.version)
