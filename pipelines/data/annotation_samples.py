"""The training samples of annotations (``to_samples``): see ``pipelines.data.annotations``.

One sample per trained bar: the entry candle BUY for a long and SELL for a short, the exit
candle the opposite, every candle between HOLD with ``annotations.hold_between``. Built by the
same code as batch training (``make_windows``, ``higher_timeframes``, ``candle_targets``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from conf.schema import Config
from pipelines.data.dataset import Dataset
from pipelines.data.features import candle_targets, higher_timeframes, make_windows
from pipelines.data.labels import BUY, HOLD, SELL
from pipelines.data.sources import SymbolSpec
from pipelines.errors import AnnotationError

if TYPE_CHECKING:  # annotations imports this module: no import back at run time
    from pipelines.data.annotations import Annotation

logger = logging.getLogger(__name__)

CandleLoader = Callable[[SymbolSpec], pd.DataFrame]


@dataclass
class Samples:
    """Training samples of some annotations, and the bars that could give none (why)."""

    data: Dataset
    skipped: list[str]


def _bars(a: Annotation, candles: pd.DataFrame) -> tuple[int, int] | str:
    """Positions of the trade's entry and exit candles, or why it has none in ``candles``.

    A stored trade was checked against the candles of its day; the loader's range may have
    moved since (``data.since``/``until``, a shorter synthetic series, another cache), so its
    bars may be missing now: that trade is skipped, and said so, while the others train."""
    pos = []
    for what, t in (("entry", a.entry_time), ("exit", a.exit_time)):
        i = int(candles.index.searchsorted(t))
        if i >= len(candles) or candles.index[i] != t:
            span = f"{candles.index[0]} .. {candles.index[-1]}" if len(candles) else "no candles"
            return (
                f"annotation {a.id}: its {what} bar {t} is not in the loaded candles of "
                f"{a.symbol}@{a.timeframe} (they open {span}); widen data.since/data.until (or "
                f"the series) to cover it, or `candleray annotate remove --id {a.id}`"
            )
        pos.append(i)
    return pos[0], pos[1]


def to_samples(annotations: Iterable[Annotation], loader: CandleLoader, cfg: Config) -> Samples:
    """One sample per trained bar: entry BUY/SELL, exit the opposite, HOLD between (if on)."""
    window = cfg.features.window
    keys: list[str] = []
    parts: list[Dataset] = []
    skipped: list[str] = []
    by_spec: dict[SymbolSpec, list[Annotation]] = {}
    for a in annotations:
        by_spec.setdefault(a.spec, []).append(a)
    for spec, group in by_spec.items():
        candles = loader(spec)
        higher = higher_timeframes(candles, spec.timeframe, cfg.data.extra_timeframes)
        ends, labels = [], []
        for a in group:
            bars = _bars(a, candles)
            if isinstance(bars, str):
                skipped.append(bars)
                continue
            i_e, i_x = bars
            first, last = (BUY, SELL) if a.side == "long" else (SELL, BUY)
            mid = list(range(i_e + 1, i_x)) if cfg.annotations.hold_between else []
            for i, y in [(i_e, first), *((i, HOLD) for i in mid), (i_x, last)]:
                if window - 1 <= i <= len(candles) - 2:
                    ends.append(i)
                    labels.append(y)
                else:
                    why = "no full window before it" if i < window - 1 else "no next candle"
                    skipped.append(f"annotation {a.id}: bar {candles.index[i]} has {why}")
        if not ends:
            continue
        e = np.asarray(ends, dtype=np.int64)
        x, sigma = make_windows(candles, window, higher, e)
        y_candle = candle_targets(candles, window, e, sigma)
        sid = np.full(len(e), len(keys), dtype=np.int32)
        times = candles.index.as_unit("ns").asi8[e]
        keys.append(spec.key)
        parts.append(Dataset(x, y_candle, np.asarray(labels, dtype=np.int64), sid, times))
    for s in skipped:
        logger.warning("%s: no training sample", s)
    if not parts:
        shown = "; ".join(skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        raise AnnotationError(
            f"the annotations give no training sample (each needs features.window={window} "
            "candles before its bars and a candle after, within the loaded candles); mark "
            f"trades later in the data. Skipped: {shown}"
        )
    return Samples(Dataset.concat(parts, tuple(keys)), skipped)
