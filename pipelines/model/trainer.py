"""Plain-torch training of the candle transformer: loss, one step, metrics, state.

No Ray here: the ModelActor wraps a ``Trainer`` and is the only caller of ``train_step``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from conf.schema import TrainConfig
from pipelines.data.features import N_CANDLE_TARGETS
from pipelines.errors import InvalidInputError
from pipelines.model.network import CandleTransformer, ModelSpec

METRICS = ("total_loss", "candle_loss", "action_loss", "candle_accuracy", "action_accuracy")


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

    # -- loss -------------------------------------------------------------------------------
    def _losses(
        self, x: torch.Tensor, yc: torch.Tensor, ya: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pred, logits = self.model(x)
        candle = F.smooth_l1_loss(pred, yc, reduction="none").mean(dim=1)  # (B,)
        action = F.cross_entropy(logits, ya, reduction="none")  # (B,)
        base = self.cfg.candle_loss_weight * candle + self.cfg.action_loss_weight * action  # (B,)
        wrong_dir = (torch.sign(pred[:, 3]) != torch.sign(yc[:, 3])).float()
        with torch.no_grad():  # weights are data, not something to optimise
            hard = (base / base.mean().clamp_min(1e-8)).clamp(max=5.0)
            w = (
                1.0
                + self.cfg.hard_sample_weight * hard
                + self.cfg.wrong_direction_weight * wrong_dir
            )
        total = (w * base).sum() / w.sum()
        return {
            "total_loss": total,
            "candle_loss": candle.mean(),
            "action_loss": action.mean(),
            "candle_accuracy": 1.0 - wrong_dir.mean(),
            "action_accuracy": (logits.argmax(dim=1) == ya).float().mean(),
        }

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
        losses = self._losses(xt, yc, ya)
        if not torch.isfinite(losses["total_loss"]):
            raise InvalidInputError(
                "the batch produced a non-finite loss; no weights were updated "
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
        self.history.append(out)
        return out

    @torch.no_grad()
    def evaluate(
        self, x: Any, y_candle: Any, y_action: Any, batch_size: int = 1024
    ) -> dict[str, float]:
        """Mean metrics over a dataset in eval mode (no update)."""
        check_batch(self.spec, x, y_candle, y_action)
        self.model.eval()
        sums: dict[str, float] = dict.fromkeys(METRICS, 0.0)
        n = len(x)
        for s in range(0, n, batch_size):
            xt, yc, ya = self._tensors(
                x[s : s + batch_size], y_candle[s : s + batch_size], y_action[s : s + batch_size]
            )
            for k, v in self._losses(xt, yc, ya).items():
                sums[k] += float(v) * len(xt)
        return {k: v / n for k, v in sums.items()}

    # -- metrics ----------------------------------------------------------------------------
    def rolling(self, n: int | None = None) -> dict[str, float]:
        h = list(self.history)[-(n or self.cfg.trend_window) :]
        return {k: float(np.mean([m[k] for m in h])) for k in METRICS} if h else {}

    def is_new_best(self, metric: str = "total_loss") -> bool:
        """True (and remembered) when the rolling mean of ``metric`` beats the best so far."""
        if len(self.history) < min(self.cfg.trend_window, 10):
            return False
        cur = self.rolling()
        if metric not in cur:
            raise InvalidInputError(f"checkpoint.best_metric={metric!r} is not one of {METRICS}")
        better = metric not in self.best or (
            cur[metric] < self.best[metric] if "loss" in metric else cur[metric] > self.best[metric]
        )
        if better:
            self.best = dict(cur)
            self.best_step = self.step
        return better

    def trend(self) -> str:
        """improving / flat / degrading: mean loss of the newer half of the window vs the older half."""
        h = [m["total_loss"] for m in list(self.history)[-self.cfg.trend_window :]]
        if len(h) < 4:
            return "flat"
        half = len(h) // 2
        old, new = float(np.mean(h[:half])), float(np.mean(h[half:]))
        change = (new - old) / max(abs(old), 1e-12)
        return "improving" if change < -0.02 else "degrading" if change > 0.02 else "flat"

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "current": dict(self.history[-1]) if self.history else {},
            "recent": self.rolling(),
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
