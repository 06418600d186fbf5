"""Market data: the candle schema and its validator, sources, features, labels and datasets.

    from pipelines.data import load_candles, parse_symbol
    candles = load_candles(parse_symbol("sample:EURUSD", "1h"), cfg.data)

Submodules: ``candles`` (schema, validation, gaps, timeframes), ``sources`` (sample,
synthetic, ccxt with a parquet cache), ``features`` (normalised windows, higher
timeframes), ``labels`` (pivots, price-move actions), ``dataset`` (windows + targets, the
train/holdout split).
"""

from pipelines.data.candles import find_gaps, resample, timeframe_seconds, validate_candles
from pipelines.data.sources import SymbolSpec, load_candles, parse_symbol

__all__ = [
    "SymbolSpec",
    "find_gaps",
    "load_candles",
    "parse_symbol",
    "resample",
    "timeframe_seconds",
    "validate_candles",
]
