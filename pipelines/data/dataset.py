"""Training sets: windows, next-candle targets and action labels per symbol, split by time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from conf.schema import Config
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
        return Dataset(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("x", "y_candle", "y_action", "symbol", "end_time")
            ),
            symbols=symbols,
        )


@dataclass
class Split:
    train: Dataset
    holdout: Dataset
    ranges: dict[str, dict[str, str]]  # symbol -> train/holdout first and last window end (ISO)


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


def build_split(candles_by_spec: dict[SymbolSpec, pd.DataFrame], cfg: Config) -> Split:
    """Per symbol, the last ``holdout_fraction`` of windows is held out.

    The ``pivot_bars + 1`` training windows just before the cut are dropped (purged):
    their labels look that far ahead, into the held-out range.
    """
    specs = list(candles_by_spec)
    symbols = tuple(s.key for s in specs)
    purge = cfg.labels.pivot_bars + 1
    trains, holds, ranges = [], [], {}
    for i, spec in enumerate(specs):
        ds = symbol_windows(candles_by_spec[spec], spec, cfg, i)
        if len(ds) < 10:
            raise ValueError(
                f"{spec.key}: only {len(ds)} usable windows; need more candles than "
                f"features.window={cfg.features.window} (widen data.since/until)"
            )
        cut = int(len(ds) * (1.0 - cfg.train.holdout_fraction))
        tr, ho = ds.subset(np.arange(0, max(cut - purge, 0))), ds.subset(np.arange(cut, len(ds)))
        trains.append(tr)
        holds.append(ho)

        def iso(t: np.ndarray, k: int) -> str:
            return pd.Timestamp(int(t[k]), tz="UTC").isoformat() if len(t) else ""

        ranges[spec.key] = {
            "train_start": iso(tr.end_time, 0),
            "train_end": iso(tr.end_time, -1),
            "holdout_start": iso(ho.end_time, 0),
            "holdout_end": iso(ho.end_time, -1),
        }
    return Split(Dataset.concat(trains, symbols), Dataset.concat(holds, symbols), ranges)
