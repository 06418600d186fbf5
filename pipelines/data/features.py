"""Model inputs: windows of normalised candles, (B, T, F), with no look-ahead.

For a window ending at bar i (the anchor), with c_i its close and sigma_i the std of the
log close-to-close returns inside the window:

* price features: log(p_j / c_i) / sigma_i for p in open, high, low, close     (4)
* volume feature: log1p(v_j) - mean(log1p(v) over the window)                  (1)
* for each extra timeframe: the last *closed* higher candle as of bar j's close,
  log(P / c_i) / sigma_i for its open, high, low, close (0 before the first)   (4 each)

Targets (need bar i + 1): log(o,h,l,c of bar i+1 / c_i) / sigma_i and the volume feature
of bar i+1. Everything is in units of the window's own volatility, so assets and
timeframes of any price level share one model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from pipelines.data.candles import COLUMNS, align_values, resample_values, timeframe_seconds

N_CANDLE_TARGETS = 5
CLIP = 50.0
_MIN_SIGMA = 1e-5


def n_features(n_extra_timeframes: int) -> int:
    return 5 + 4 * n_extra_timeframes


def candle_values(candles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A candle frame as the arrays the ``*_from_values`` functions take: (N,) open times in
    ns since the epoch and (N, 5) float64 o/h/l/c/v.

    Each function below has a frame form (training, backtests) and an array form (live
    sessions, the predictor's requests: pandas spends far longer selecting a few columns of a
    small frame than the arithmetic takes); the frame form calls the array form, so there is
    one feature implementation.
    """
    return candles.index.as_unit("ns").asi8, candles[list(COLUMNS)].to_numpy(dtype="float64")


def higher_timeframes(
    candles: pd.DataFrame, base_tf: str, extra: tuple[str, ...]
) -> list[np.ndarray]:
    """Per extra timeframe, (N, 4) log o/h/l/c of the last closed higher candle per base bar.

    Where the extra timeframe is not coarser than the base (e.g. 4h extra on daily data)
    the base candle itself is the last closed candle at that resolution.
    """
    return higher_from_values(*candle_values(candles), base_tf, extra)


def higher_from_values(
    times_ns: np.ndarray, values: np.ndarray, base_tf: str, extra: tuple[str, ...]
) -> list[np.ndarray]:
    """``higher_timeframes`` on arrays (see ``candle_values``)."""
    out = []
    for tf in extra:
        if timeframe_seconds(tf) <= timeframe_seconds(base_tf):
            vals = values[:, :4]
        else:
            ht, hv = resample_values(times_ns, values, tf)
            vals = align_values(times_ns, base_tf, ht, hv, tf)[:, :4]
        out.append(np.log(vals))
    return out


def _raw(values: np.ndarray, higher: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lp = np.log(values[:, :4])  # (N, 4)
    lv = np.log1p(values[:, 4])  # (N,)
    hp = (
        np.concatenate(higher, axis=1) if higher else np.zeros((len(lp), 0))
    )  # (N, 4E), NaN before first
    return np.concatenate([lp, hp], axis=1), lv


def make_windows(
    candles: pd.DataFrame, window: int, higher: list[np.ndarray], ends: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ending at each bar in ``ends`` (default: every bar with a full window).

    Returns x (M, T, F) float32 and sigma (M,) float64. Window m uses bars
    ends[m]-T+1 .. ends[m] only.
    """
    return windows_from_values(candle_values(candles)[1], window, higher, ends)


def windows_from_values(
    values: np.ndarray, window: int, higher: list[np.ndarray], ends: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``make_windows`` on the (N, 5) o/h/l/c/v array."""
    prices, lv = _raw(values, higher)
    n = len(prices)
    if ends is None:
        ends = np.arange(window - 1, n)
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and (ends.min() < window - 1 or ends.max() >= n):
        raise ValueError(f"window ends must lie in [{window - 1}, {n - 1}]")
    starts = ends - window + 1
    pw = sliding_window_view(prices, window, axis=0)[starts]  # (M, F_p, T)
    pw = np.transpose(pw, (0, 2, 1))  # (M, T, F_p)
    vw = sliding_window_view(lv, window)[starts]  # (M, T)
    anchor = pw[:, -1, 3]  # log close of the last bar, (M,)
    sigma = np.maximum(np.diff(pw[:, :, 3], axis=1).std(axis=1), _MIN_SIGMA)  # (M,)
    px = (pw - anchor[:, None, None]) / sigma[:, None, None]
    px = np.nan_to_num(px, nan=0.0)
    vx = (vw - vw.mean(axis=1, keepdims=True))[:, :, None]
    x = np.concatenate([px[:, :, :4], vx, px[:, :, 4:]], axis=2)
    return np.clip(x, -CLIP, CLIP).astype(np.float32), sigma


def candle_targets(
    candles: pd.DataFrame, window: int, ends: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """(M, 5) normalised next candle for windows ending at ``ends`` (each end must have a next bar)."""
    return targets_from_values(candle_values(candles)[1], window, ends, sigma)


def targets_from_values(
    values: np.ndarray, window: int, ends: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """``candle_targets`` on the (N, 5) o/h/l/c/v array."""
    lp = np.log(values[:, :4])
    lv = np.log1p(values[:, 4])
    nxt = ends + 1
    y = (lp[nxt] - lp[ends, 3][:, None]) / sigma[:, None]
    vmean = sliding_window_view(lv, window)[ends - window + 1].mean(axis=1)
    yv = (lv[nxt] - vmean)[:, None]
    return np.clip(np.concatenate([y, yv], axis=1), -CLIP, CLIP).astype(np.float32)


def denormalise(pred: np.ndarray, anchor_close: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(M, 5) model output → (M, 4) predicted open, high, low, close prices (ghost candle)."""
    return anchor_close[:, None] * np.exp(pred[:, :4] * sigma[:, None])
