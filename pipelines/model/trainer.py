"""Plain-torch training of the candle transformer: loss, one step, metrics, state.

No Ray here: the ModelActor wraps a ``Trainer`` and is the only caller of ``train_step``.

A flat next close (target close change exactly 0) has no direction: it is left out of
``candle_accuracy`` and gets no wrong-direction weight (``pipelines.model.direction``, the
rule evaluation and backtests use too). A batch of flat targets only reports
``candle_accuracy`` NaN. Means over several steps or batches (epochs, ``rolling``,
``evaluate``) are per sample, never per batch: see ``mean_metrics``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conf.schema import TrainConfig
from pipelines.data.features import N_CANDLE_TARGETS
from pipelines.errors import InvalidInputError
from pipelines.model.direction import direction_hits
from pipelines.model.network import CandleTransformer, ModelSpec

METRICS = ("total_loss", "candle_loss", "action_loss", "candle_accuracy", "action_accuracy")
# sample counts each step reports beside METRICS, so means over steps can weigh by them
COUNTS = ("samples", "direction_samples")


def mean_metrics(steps: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-sample mean of several steps' metrics (an epoch, a rolling window).

    Each step weighs by its ``samples``, so a short last batch counts for its few samples,
    not as much as a full one; ``candle_accuracy`` weighs by ``direction_samples`` and skips
    steps that had none (NaN). Counts are summed; other keys (``lr``) are plain means. Steps
    recorded before counts existed (old checkpoints' history) weigh 1.
    """
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for m in steps for k in m):  # keys in first-seen order
        present = [m for m in steps if k in m]
        if k in COUNTS:
            out[k] = float(sum(m[k] for m in present))
            continue
        if k in METRICS:
            wkey = "direction_samples" if k == "candle_accuracy" else "samples"
            pairs = [
                (float(m[k]), float(m.get(wkey, m.get("samples", 1.0))))
                for m in present
                if math.isfinite(m[k])
            ]
        else:
            pairs = [(float(m[k]), 1.0) for m in present]
        wsum = sum(w for _, w in pairs)
        out[k] = sum(v * w for v, w in pairs) / wsum if wsum > 0 else float("nan")
    return out


def check_batch(spec: ModelSpec, x: Any, y_candle: Any = None, y_action: Any = None) -> None:
    """Refuse a batch the model cannot take, before anything is touched. Raises InvalidInputError."""
    want = f"(B, {spec.window}, {spec.n_features})"
    xa = np.asarray(x) if not isinstance(x, torch.Tensor) else x
    if xa.ndim != 3 or tuple(xa.shape[1:]) != (spec.window, spec.n_features) or xa.shape[0] == 0:
        raise InvalidInputError(
            f"windows have shape {tuple(xa.shape)}; this model takes {want} "
            f"(window={spec.window}, features={spec.n_features}) with B >= 1"
        )
    b = xa.shape[0]
    for name, arr in (("windows", xa), ("next-candle targets", y_candle)):
        if arr is None:
            continue
        a = arr if isinstance(arr, torch.Tensor) else np.asarray(arr, dtype=np.float64)
        bad = ~torch.isfinite(a) if isinstance(a, torch.Tensor) else ~np.isfinite(a)
        if bad.any():
            first = int(np.argwhere(np.asarray(bad.reshape(b, -1).any(1)))[0, 0])
            raise InvalidInputError(
                f"{name} contain NaN or infinite values (first in sample {first}); "
                "clean or drop those samples — no weights were updated"
            )
    if y_candle is not None and tuple(np.shape(y_candle)) != (b, N_CANDLE_TARGETS):
        raise InvalidInputError(
            f"next-candle targets have shape {tuple(np.shape(y_candle))}; "
            f"expected ({b}, {N_CANDLE_TARGETS})"
        )
    if y_action is not None:
        ya = np.asarray(y_action)
        if ya.shape != (b,) or not np.isin(ya, (0, 1, 2)).all():
            raise InvalidInputError(
                f"action labels must be {b} integers in {{0: HOLD, 1: BUY, 2: SELL}}; "
                f"got shape {ya.shape} with values {np.unique(ya)[:5].tolist()}"
            )


def sample_indices(indices: Any, n: int) -> np.ndarray:
    """``indices`` into a dataset of ``n`` samples as int64 positions (N,); InvalidInputError.

    ``None`` selects every sample. A boolean mask selects its True rows and must have one
    entry per sample (never read as positions 0 and 1). Positions must lie in [0, n - 1].
    """
    if indices is None:
        idx = np.arange(n, dtype=np.int64)
    else:
        a = np.asarray(indices)
        if a.ndim != 1:
            raise InvalidInputError(
                f"sample indices must be one-dimensional; got shape {a.shape} — "
                "pass a list/array of positions or a boolean mask"
            )
        if a.dtype == np.bool_:
            if len(a) != n:
                raise InvalidInputError(
                    f"a boolean mask of samples needs one entry per sample ({n}); got {len(a)} — "
                    "build it from this dataset (e.g. data.symbol == 0), or pass positions"
                )
            idx = np.flatnonzero(a)
        elif a.size == 0 or np.issubdtype(a.dtype, np.integer):
            idx = a.astype(np.int64)
        else:
            raise InvalidInputError(
                f"sample indices must be integer positions or a boolean mask; got dtype "
                f"{a.dtype} — e.g. np.arange(len(data)) or data.symbol == 0"
            )
    if len(idx) == 0:
        raise InvalidInputError(
            "no samples to train on; pass at least one index (or a mask with a True entry)"
        )
    if idx.min() < 0 or idx.max() >= n:
        raise InvalidInputError(f"sample indices must lie in [0, {n - 1}]")
    return idx


def loss_trend(losses: list[float]) -> str:
    """improving / flat / degrading: mean of the newer half of ``losses`` vs the older half.

    A change of more than 2 % either way is a trend; fewer than 4 losses is ``flat``. The one
    definition for the ModelActor's metrics and for live sessions' training.
    """
    if len(losses) < 4:
        return "flat"
    half = len(losses) // 2
    old, new = float(np.mean(losses[:half])), float(np.mean(losses[half:]))
    change = (new - old) / max(abs(old), 1e-12)
    return "improving" if change < -0.02 else "degrading" if change > 0.02 else "flat"


class Trainer:
    def __init__(
        self, spec: ModelSpec, cfg: TrainConfig, device: torch.device, seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.spec, self.cfg, self.device = spec, cfg, device
        self.model = CandleTransformer(spec).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.history: deque[dict[str, float]] = deque(maxlen=max(2 * cfg.trend_window, 10))
        self.best: dict[str, float] = {}
        self.best_step = 0
        self.last_train_time: float | None = None

    # -- loss ---------------------------------------------------------------------------------
    def _per_sample(
        self,
        x: torch.Tensor,
        yc: torch.Tensor,
        ya: torch.Tensor,
        model: torch.nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample terms, each (B,): losses, direction right/counted, action right.

        ``model``: what runs the forward pass (a data-parallel rank passes its DDP wrapper).
        """
        pred, logits = (model or self.model)(x)
        right, counted = direction_hits(pred[:, 3], yc[:, 3])
        return {
            "candle": F.smooth_l1_loss(pred, yc, reduction="none").mean(dim=1),
            "action": F.cross_entropy(logits, ya, reduction="none"),
            "dir_right": right,
            "dir_counted": counted,
            "action_right": logits.argmax(dim=1) == ya,
        }

    def _base(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sample's unweighted loss (B,)."""
        return self.cfg.candle_loss_weight * p["candle"] + self.cfg.action_loss_weight * p["action"]

    def _sample_weights(
        self, p: dict[str, torch.Tensor], base: torch.Tensor, base_mean: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's loss weight (B,), no gradient. ``base_mean``: the mean of ``base``
        over the whole batch (a data-parallel rank passes the global one, so a sample's
        hard-sample weight does not depend on which shard it landed in)."""
        wrong_dir = (p["dir_counted"] & ~p["dir_right"]).float()  # flat targets: never wrong
        with torch.no_grad():  # weights are data, not something to optimise
            hard = (base / base_mean.clamp_min(1e-8)).clamp(max=5.0)
            return (
                1.0
                + self.cfg.hard_sample_weight * hard
                + self.cfg.wrong_direction_weight * wrong_dir
            )

    def _reduce(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """METRICS of one set of per-sample terms; ``total_loss`` is the weighted loss."""
        base = self._base(p)
        w = self._sample_weights(p, base, base.mean())
        return {
            "total_loss": (w * base).sum() / w.sum(),
            "candle_loss": p["candle"].mean(),
            "action_loss": p["action"].mean(),
            # 0/0 = NaN when every target is flat: there was no direction to score
            "candle_accuracy": p["dir_right"].float().sum() / p["dir_counted"].float().sum(),
            "action_accuracy": p["action_right"].float().mean(),
        }

    def _losses(
        self, x: torch.Tensor, yc: torch.Tensor, ya: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self._reduce(self._per_sample(x, yc, ya))

    def _tensors(self, x: Any, yc: Any, ya: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.device
        # np.array copies: batches from the object store are read-only views
        return (
            torch.as_tensor(np.array(x, dtype=np.float32), device=d),
            torch.as_tensor(np.array(yc, dtype=np.float32), device=d),
            torch.as_tensor(np.array(ya, dtype=np.int64), device=d),
        )

    # -- training ---------------------------------------------------------------------------
    def train_step(self, x: Any, y_candle: Any, y_action: Any) -> dict[str, float]:
        """One optimiser step on a batch; returns its metrics. Bad input raises before any update."""
        check_batch(self.spec, x, y_candle, y_action)
        xt, yc, ya = self._tensors(x, y_candle, y_action)
        self.model.train()
        per = self._per_sample(xt, yc, ya)
        losses = self._reduce(per)
        if not torch.isfinite(losses["total_loss"]):
            raise InvalidInputError(
                "the batch produced a non-finite loss, so its step was not applied "
                "(targets too large? check the candles for outliers)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        losses["total_loss"].backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.last_train_time = time.time()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        out["samples"] = float(len(xt))
        out["direction_samples"] = float(per["dir_counted"].sum())
        self.history.append(out)
        return out

    @torch.no_grad()
    def evaluate(
        self, x: Any, y_candle: Any, y_action: Any, batch_size: int = 1024
    ) -> dict[str, float]:
        """Metrics over a whole dataset in eval mode (no update), per sample.

        ``batch_size`` only bounds memory: the per-sample terms of all batches are reduced
        once, so every metric (``total_loss``'s hard-sample weights included) is what one
        batch of the whole dataset would give, whatever the batch size.
        """
        check_batch(self.spec, x, y_candle, y_action)
        self.model.eval()
        parts: list[dict[str, torch.Tensor]] = []
        for s in range(0, len(x), batch_size):
            parts.append(
                self._per_sample(
                    *self._tensors(
                        x[s : s + batch_size],
                        y_candle[s : s + batch_size],
                        y_action[s : s + batch_size],
                    )
                )
            )
        per = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out = {k: float(v) for k, v in self._reduce(per).items()}
        out["samples"] = float(len(x))
        out["direction_samples"] = float(per["dir_counted"].sum())
        return out

    # -- metrics ----------------------------------------------------------------------------
    def rolling(self, n: int | None = None) -> dict[str, float]:
        """Per-sample mean of METRICS over the last ``n`` (default ``trend_window``) steps."""
        h = list(self.history)[-(n or self.cfg.trend_window) :]
        if not h:
            return {}
        mean = mean_metrics(h)
        return {k: mean.get(k, float("nan")) for k in METRICS}

    def is_new_best(self, metric: str = "total_loss") -> bool:
        """True (and remembered) when the rolling mean of ``metric`` beats the best so far."""
        if len(self.history) < min(self.cfg.trend_window, 10):
            return False
        cur = self.rolling()
        if metric not in cur:
            raise InvalidInputError(f"checkpoint.best_metric={metric!r} is not one of {METRICS}")
        if math.isnan(cur[metric]):  # e.g. candle_accuracy over flat targets only
            return False
        better = (
            metric not in self.best
            or math.isnan(self.best[metric])
            or (
                cur[metric] < self.best[metric]
                if "loss" in metric
                else cur[metric] > self.best[metric]
            )
        )
        if better:
            self.best = dict(cur)
            self.best_step = self.step
        return better

    def trend(self) -> str:
        """``loss_trend`` of the total loss over the last ``train.trend_window`` steps."""
        return loss_trend([m["total_loss"] for m in list(self.history)[-self.cfg.trend_window :]])

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "current": dict(self.history[-1]) if self.history else {},
            "recent": self.rolling(),
            # how many steps ``recent`` (and ``best``, a past ``recent``) averages
            "recent_steps": min(len(self.history), self.cfg.trend_window),
            "best": dict(self.best),
            "best_step": self.best_step,
            "trend": self.trend(),
            "last_train_time": self.last_train_time,
        }

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs, in types ``torch.load(weights_only=True)`` accepts."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": list(self.history),
            "best": dict(self.best),
            "best_step": self.best_step,
            "spec": self.spec.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("spec") != self.spec.to_dict():
            raise InvalidInputError(
                f"checkpoint was made for model {state.get('spec')}; "
                f"this actor runs {self.spec.to_dict()} — use a matching config"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history.clear()
        self.history.extend(state.get("history", []))
        self.best = dict(state.get("best", {}))
        self.best_step = int(state.get("best_step", 0))

    def weights_cpu(self) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the weights: a snapshot that later steps never touch."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
