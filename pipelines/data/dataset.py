"""Training sets: windows, next-candle targets and action labels per symbol, split by time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from conf.schema import Config
from pipelines.data.candles import timeframe_seconds
from pipelines.data.features import candle_targets, higher_timeframes, make_windows
from pipelines.data.labels import UNKNOWN, action_labels
from pipelines.data.sources import SymbolSpec


@dataclass
class Dataset:
    """Arrays for the model. x (N, T, F) float32; y_candle (N, 5) float32; y_action (N,) int64."""

    x: np.ndarray
    y_candle: np.ndarray
    y_action: np.ndarray
    symbol: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int32)
    )  # (N,) index into symbols
    end_time: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )  # (N,) ns, window's last bar
    symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.x)  # arrays built by hand may leave out symbol ids and times
        if len(self.symbol) != n:
            self.symbol = np.zeros(n, dtype=np.int32)
        if len(self.end_time) != n:
            self.end_time = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(
            self.x[idx],
            self.y_candle[idx],
            self.y_action[idx],
            self.symbol[idx],
            self.end_time[idx],
            self.symbols,
        )

    @staticmethod
    def concat(parts: list[Dataset], symbols: tuple[str, ...]) -> Dataset:
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return Dataset(
            x=cat("x"),
            y_candle=cat("y_candle"),
            y_action=cat("y_action"),
            symbol=cat("symbol"),
            end_time=cat("end_time"),
            symbols=symbols,
        )


@dataclass
class Split:
    """Training and held-out windows of all symbols, cut at one time.

    cut: ISO time; held-out windows end at or after it, and every training window's label
    horizon closes by it. ranges: per symbol, the first and last window end (ISO) of its
    training and held-out windows ("" where it has none: all its data before or after the cut).
    """

    train: Dataset
    holdout: Dataset
    ranges: dict[str, dict[str, str]]
    cut: str = ""


def symbol_windows(
    candles: pd.DataFrame, spec: SymbolSpec, cfg: Config, symbol_id: int = 0
) -> Dataset:
    """Every window of ``candles`` whose next candle and label are known, in time order."""
    window = cfg.features.window
    labels = action_labels(candles, cfg.labels.pivot_bars, cfg.labels.move_threshold)
    ends = np.arange(window - 1, len(candles) - 1)
    ends = ends[labels[ends] != UNKNOWN]
    higher = higher_timeframes(candles, spec.timeframe, cfg.data.extra_timeframes)
    x, sigma = make_windows(candles, window, higher, ends)
    y = candle_targets(candles, window, ends, sigma)
    times = candles.index.as_unit("ns").asi8[ends]
    return Dataset(
        x, y, labels[ends], np.full(len(ends), symbol_id, dtype=np.int32), times, (spec.key,)
    )


def holdout_cut(end_times: np.ndarray, holdout_fraction: float) -> int:
    """The cut (ns): the window end time below which ``1 - holdout_fraction`` of windows end."""
    t = np.sort(end_times)
    return int(t[min(int(len(t) * (1.0 - holdout_fraction)), len(t) - 1)])


def build_split(candles_by_spec: dict[SymbolSpec, pd.DataFrame], cfg: Config) -> Split:
    """Hold out every window ending at or after one cut time, the same for all symbols.

    The cut is the ``1 - train.holdout_fraction`` quantile of all symbols' window end times,
    so no symbol trains on a period another symbol holds out (the same asset at two
    timeframes, or correlated assets, would leak it). A symbol whose data all lies before
    (after) the cut only trains (is only held out).

    Training windows are purged unless their label horizon has closed by the cut: the target
    and label of a window ending at bar t need bars up to t + max(1, ``labels.pivot_bars``),
    which close at t + (max(1, pivot_bars) + 1) bars of the symbol's own timeframe.
    """
    specs = list(candles_by_spec)
    symbols = tuple(s.key for s in specs)
    horizon = max(1, cfg.labels.pivot_bars)
    sets = []
    for i, spec in enumerate(specs):
        ds = symbol_windows(candles_by_spec[spec], spec, cfg, i)
        if len(ds) < 10:
            raise ValueError(
                f"{spec.key}: only {len(ds)} usable windows; need more candles than "
                f"features.window={cfg.features.window} (widen data.since/until)"
            )
        sets.append(ds)
    cut = holdout_cut(np.concatenate([ds.end_time for ds in sets]), cfg.train.holdout_fraction)
    trains, holds, ranges = [], [], {}
    for spec, ds in zip(specs, sets, strict=True):
        known = ds.end_time + (horizon + 1) * timeframe_seconds(spec.timeframe) * 1_000_000_000
        tr = ds.subset(np.flatnonzero(known <= cut))
        ho = ds.subset(np.flatnonzero(ds.end_time >= cut))
        trains.append(tr)
        holds.append(ho)
        ranges[spec.key] = {
            "train_start": _iso(tr.end_time, 0),
            "train_end": _iso(tr.end_time, -1),
            "holdout_start": _iso(ho.end_time, 0),
            "holdout_end": _iso(ho.end_time, -1),
        }
    train = Dataset.concat(trains, symbols)
    if len(train) == 0:
        raise ValueError(
            f"no training windows end before the hold-out cut {_iso(np.array([cut]), 0)}; "
            f"lower train.holdout_fraction={cfg.train.holdout_fraction} or load more history"
        )
    return Split(train, Dataset.concat(holds, symbols), ranges, _iso(np.array([cut]), 0))


def _iso(t: np.ndarray, k: int) -> str:
    return pd.Timestamp(int(t[k]), tz="UTC").isoformat() if len(t) else ""
