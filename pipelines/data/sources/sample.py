"""Real OHLCV series shipped inside the ``backtesting`` package: the offline default."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.data.candles import normalize_columns, validate_candles
from pipelines.errors import DataSourceError

# name -> (csv file inside backtesting/test, native timeframe)
SAMPLES: dict[str, tuple[str, str]] = {
    "EURUSD": ("EURUSD.csv", "1h"),
    "GOOG": ("GOOG.csv", "1d"),
}
_ALIASES = {"EUR/USD": "EURUSD", "EURUSD": "EURUSD", "GOOG": "GOOG"}


def sample_names() -> list[str]:
    return sorted(SAMPLES)


def native_timeframe(symbol: str) -> str:
    return SAMPLES[_canonical(symbol)][1]


def _canonical(symbol: str) -> str:
    name = _ALIASES.get(symbol.upper())
    if name is None:
        raise DataSourceError(
            f"no sample series named {symbol!r}; shipped samples are {sample_names()} "
            "(use synthetic:NAME for generated data or <exchange>:SYMBOL for an exchange)"
        )
    return name


def load_sample(symbol: str) -> pd.DataFrame:
    """Load a shipped series as validated candles (UTC; the CSVs carry naive exchange times)."""
    name = _canonical(symbol)
    try:
        import backtesting.test as bt_test
    except ImportError as exc:  # pragma: no cover - backtesting is a dependency
        raise DataSourceError(
            "the sample series come with the 'backtesting' package; pip install backtesting"
        ) from exc
    path = Path(bt_test.__file__).parent / SAMPLES[name][0]
    raw = pd.read_csv(path, index_col=0, parse_dates=True)
    return validate_candles(normalize_columns(raw), symbol=f"sample:{name}")
