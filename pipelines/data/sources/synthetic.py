"""Seeded synthetic candles with a planted, learnable pattern.

Log-returns follow ``r_t = ar * r_{t-1} + A * sin(2*pi*t / period + phase) + sigma * eps_t``:
the sign of the next return is predictable from the recent ones (mean reversion plus a
cycle), so a model that learns must beat the persistence and always-HOLD baselines.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from conf.schema import SyntheticConfig
from pipelines.data.candles import COLUMNS, timeframe_offset, validate_candles


def generate(
    symbol: str, timeframe: str, cfg: SyntheticConfig, length: int | None = None
) -> pd.DataFrame:
    """Candles for ``symbol``; the same (symbol, cfg) always gives the same series."""
    n = int(length or cfg.length)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(symbol.encode())])
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(n)
    drive = cfg.cycle_amplitude * np.sin(2 * np.pi * t / cfg.cycle_period + phase)
    eps = rng.standard_normal(n) * cfg.volatility
    r = np.empty(n)
    prev = 0.0
    for i in range(n):  # AR(1) recursion; n is at most a few 100k
        prev = cfg.ar * prev + drive[i] + eps[i]
        r[i] = prev
    start_price = float(rng.uniform(20, 200))
    close = start_price * np.exp(np.cumsum(r))
    open_ = np.r_[start_price, close[:-1]] * np.exp(rng.standard_normal(n) * cfg.volatility * 0.05)
    wick = np.abs(rng.standard_normal((2, n))) * cfg.volatility * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(1000 * np.exp(rng.standard_normal(n) * 0.3 + 20 * np.abs(r)), 3)
    idx = pd.date_range(
        pd.Timestamp(cfg.start, tz="UTC"), periods=n, freq=timeframe_offset(timeframe), name="time"
    )
    df = pd.DataFrame(np.c_[open_, high, low, close, volume], index=idx, columns=list(COLUMNS))
    return validate_candles(df, symbol=f"synthetic:{symbol}")
