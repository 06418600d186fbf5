"""Settling a prediction against the candle that arrived, and a session's running metrics.

Errors per field (open, high, low, close) are given two ways:

* ``err_pct``: predicted price / actual price − 1, in %;
* ``err_vol``: predicted − actual log change from the anchor close, in units of the window's
  volatility sigma (the model's own scale, as ``model_stats`` in backtests).

Direction follows ``pipelines.model.direction``, the rule of the loss, training metrics and
backtests: right when the predicted next-close change has the actual change's sign; a flat
next close (no change) has no direction and is left out of direction accuracy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.model.direction import direction_hits

FIELDS: tuple[str, ...] = ("open", "high", "low", "close")


@dataclass(frozen=True, slots=True)
class Settlement:
    """One prediction settled: errors (4,) per o/h/l/c; ``hit``: direction right (None: flat)."""

    err_pct: tuple[float, ...]
    err_vol: tuple[float, ...]
    hit: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {
            **{f"err_pct_{f}": e for f, e in zip(FIELDS, self.err_pct, strict=True)},
            **{f"err_vol_{f}": e for f, e in zip(FIELDS, self.err_vol, strict=True)},
            "hit": self.hit,
        }


def settle(
    pred: np.ndarray, ghost: np.ndarray, anchor: float, sigma: float, actual: np.ndarray
) -> Settlement:
    """pred (5,) normalised candle; ghost (4,) its prices; anchor the close it was made at;
    actual (4,) the o/h/l/c that arrived."""
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    real = np.log(actual / anchor) / sigma  # (4,) actual change, volatility units
    pct = 100.0 * (np.asarray(ghost, dtype=np.float64) / actual - 1.0)
    right, counted = direction_hits(pred[3:4], np.log(actual[3:4] / anchor))
    hit = bool(right[0]) if counted[0] else None
    return Settlement(tuple(pct.tolist()), tuple((pred[:4] - real).tolist()), hit)


@dataclass
class SessionMetrics:
    """Counters of one session (JSON-friendly: journaled with the session's state).

    ``rolling`` holds the hits of the newest ``rolling_window`` settled predictions whose next
    close moved.
    """

    candles: int = 0  # candles accepted (bad ones are not)
    predictions: int = 0
    settled: int = 0
    gaps: int = 0  # jumps of more than one bar: market closures or feed holes (not bad data)
    missed: int = 0  # candles that got no prediction from the host in time (traded as HOLD)
    # predictions that can never settle: their session ended (stopped, or its feed finished)
    # before their next candle arrived; 0 while it runs (``Session.end``)
    expired: int = 0
    hits: int = 0
    directions: int = 0  # settled predictions whose next close moved (direction counted)
    rolling: deque[int] = field(default_factory=lambda: deque(maxlen=100))
    abs_err_pct: list[float] = field(default_factory=lambda: [0.0] * 4)
    abs_err_vol: list[float] = field(default_factory=lambda: [0.0] * 4)
    bad: dict[str, int] = field(
        default_factory=dict
    )  # kind -> count (nan, invalid, duplicate, ...)
    samples: int = 0  # training samples this session produced (requested)
    weights_version: int = -1

    def add(self, s: Settlement) -> None:
        self.settled += 1
        if s.hit is not None:
            self.directions += 1
            self.hits += int(s.hit)
            self.rolling.append(int(s.hit))
        for i in range(4):
            self.abs_err_pct[i] += abs(s.err_pct[i])
            self.abs_err_vol[i] += abs(s.err_vol[i])

    def count_bad(self, kind: str) -> None:
        self.bad[kind] = self.bad.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        n = self.settled
        nan = float("nan")
        return {
            "candles": self.candles,
            "predictions": self.predictions,
            "settled": n,
            "gaps": self.gaps,
            "missed": self.missed,
            "expired": self.expired,
            "direction_acc": self.hits / self.directions if self.directions else nan,
            "directions": self.directions,  # its count: pooling sessions weighs by it
            "direction_acc_rolling": float(np.mean(self.rolling)) if self.rolling else nan,
            "rolling_n": len(self.rolling),
            **{f"mae_pct_{f}": self.abs_err_pct[i] / n if n else nan for i, f in enumerate(FIELDS)},
            **{f"mae_vol_{f}": self.abs_err_vol[i] / n if n else nan for i, f in enumerate(FIELDS)},
            "bad_data": dict(self.bad),
            "weights_version": self.weights_version,
        }

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["rolling"] = list(self.rolling)
        d["rolling_maxlen"] = self.rolling.maxlen
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionMetrics:
        d = dict(d)
        rolling = deque(d.pop("rolling"), maxlen=d.pop("rolling_maxlen"))
        # states journaled before predictions settled against the next candle (no "gaps"):
        # they counted time jumps as bad data and predictions a jump skipped as "expired";
        # now both are gaps, and expired counts only what a session's end left unsettled
        if "gaps" not in d:
            d["expired"] = 0
            d["bad"] = bad = dict(d["bad"])
            d["gaps"] = bad.pop("gap", 0)
        return cls(**d, rolling=rolling)
