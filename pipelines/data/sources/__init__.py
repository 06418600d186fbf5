"""Market data sources behind one call: ``load_candles(spec, data_cfg)``.

A symbol spec is ``source:SYMBOL[@timeframe]`` where source is ``sample``,
``synthetic`` or any ccxt exchange id (``binance:BTC/USDT@4h``). A bare symbol
(``EUR/USD``) is looked up among the shipped samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from conf.schema import DataConfig
from pipelines.data.candles import find_gaps, resample, timeframe_seconds
from pipelines.errors import DataSourceError

__all__ = ["SymbolSpec", "parse_symbol", "load_candles"]


@dataclass(frozen=True)
class SymbolSpec:
    source: str
    symbol: str
    timeframe: str

    @property
    def key(self) -> str:
        return f"{self.source}:{self.symbol}@{self.timeframe}"


def parse_symbol(spec: str, default_timeframe: str) -> SymbolSpec:
    from pipelines.data.sources.sample import native_timeframe

    text = spec.strip()
    tf = None
    if "@" in text:
        text, tf = text.rsplit("@", 1)
    source, sep, symbol = text.partition(":")
    if not sep:
        source, symbol = "sample", text
    if not source or not symbol:
        raise DataSourceError(
            f"symbol spec {spec!r} must look like source:SYMBOL[@timeframe], e.g. binance:BTC/USDT@1h"
        )
    if tf is None:
        tf = native_timeframe(symbol) if source == "sample" else default_timeframe
    timeframe_seconds(tf)  # validates
    return SymbolSpec(source=source, symbol=symbol, timeframe=tf)


def _bound(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value, tz="UTC")


def load_candles(
    spec: SymbolSpec,
    cfg: DataConfig,
    *,
    exchange: object | None = None,
    range_from: str | None = None,
) -> pd.DataFrame:
    """Validated candles for one symbol, sliced to [data.since, data.until].

    range_from: the option that set ``cfg.since/until`` (e.g. ``--range`` for a backtest),
    named when the range holds no candles; None: ``data.since`` / ``data.until``.
    """
    since, until = _bound(cfg.since), _bound(cfg.until)
    if spec.source == "sample":
        from pipelines.data.sources.sample import load_sample, native_timeframe

        df = load_sample(spec.symbol)
        native = native_timeframe(spec.symbol)
        if spec.timeframe != native:
            if timeframe_seconds(spec.timeframe) < timeframe_seconds(native):
                raise DataSourceError(
                    f"sample:{spec.symbol} is {native} data and cannot be made finer ({spec.timeframe}); "
                    f"use @{native} or a coarser timeframe"
                )
            df = resample(df, spec.timeframe)
    elif spec.source == "synthetic":
        from pipelines.data.sources.synthetic import generate

        df = generate(spec.symbol, spec.timeframe, cfg.synthetic)
    else:
        from pipelines.data.sources.ccxt_source import CcxtSource

        src = CcxtSource(spec.source, cfg.ccxt, cfg.cache_dir, exchange=exchange)
        df = src.fetch(spec.symbol, spec.timeframe, since, until)
    whole = df
    if since is not None:
        df = df[df.index >= since]
    if until is not None:
        df = df[df.index <= until]
    if df.empty:
        raise DataSourceError(_no_candles(spec, cfg, whole, range_from))
    return df


def _no_candles(
    spec: SymbolSpec, cfg: DataConfig, whole: pd.DataFrame, range_from: str | None
) -> str:
    """What was asked, what is there, and which option to change."""
    if range_from is None:
        named = [n for n, v in (("data.since", cfg.since), ("data.until", cfg.until)) if v]
        range_from = "/".join(named) or None
    if range_from is None:  # no range asked: the source itself had nothing
        return f"{spec.key}: the source returned no candles at all"
    asked = f"{spec.key}: no candles in [{cfg.since or 'start'}, {cfg.until or 'end'}] (set by {range_from})"
    if len(whole):
        return (
            f"{asked}; the series covers {whole.index[0].isoformat()} to "
            f"{whole.index[-1].isoformat()} ({len(whole)} candles): change {range_from} to overlap it"
        )
    # an exchange is asked for the range only, so the series' own span is not known here
    return (
        f"{asked}; {spec.source} has none there (listed later, or delisted?): change {range_from}"
    )


def gap_report(df: pd.DataFrame, spec: SymbolSpec) -> str:
    gaps = find_gaps(df, spec.timeframe)
    if not gaps:
        return f"{spec.key}: {len(df)} candles, no gaps"
    missing = sum(g.missing_bars for g in gaps)
    return f"{spec.key}: {len(df)} candles, {len(gaps)} gaps ({missing} bars missing, largest after {max(gaps, key=lambda g: g.missing_bars).after})"
