"""Parquet cache of candles: one file per (exchange, symbol, timeframe).

Writes are atomic: the frame goes to a temporary file in the same folder, which then
replaces the old file with ``os.replace``; a crash mid-write leaves the old file whole.
A cache file that cannot be read is logged and treated as empty, so the next write
replaces it; a broken cache never stops a fetch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow as pa

from pipelines.data.candles import empty_candles, normalize_columns, validate_candles
from pipelines.errors import CandleValidationError

logger = logging.getLogger(__name__)

Writer = Callable[[pd.DataFrame, Path], None]


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path)


def _safe(name: str) -> str:
    # percent-encoding keeps names reversible and distinct ("BTC/USDT" vs "BTC-USDT")
    return quote(name, safe="-.")


class CandleCache:
    """Candles stored under ``root/<exchange>/<symbol>_<timeframe>.parquet``.

    ``writer`` writes a frame to a path; it is injectable so tests can make a write fail
    halfway and check that the old file survives.
    """

    def __init__(self, root: str | Path, *, writer: Writer = _write_parquet) -> None:
        self.root = Path(root)
        self._writer = writer

    def path(self, exchange: str, symbol: str, timeframe: str) -> Path:
        return self.root / _safe(exchange) / f"{_safe(symbol)}_{_safe(timeframe)}.parquet"

    def read(self, exchange: str, symbol: str, timeframe: str) -> pd.DataFrame:
        """The cached candles, or an empty frame when there is no (readable) cache file."""
        path = self.path(exchange, symbol, timeframe)
        if not path.exists():
            return empty_candles()
        try:
            df = normalize_columns(pd.read_parquet(path))
            return validate_candles(df, symbol)
        except (OSError, ValueError, TypeError, pa.ArrowException, CandleValidationError) as exc:
            logger.warning(
                "cache file %s is unreadable (%s: %s); treating it as empty, "
                "it will be replaced by the next fetch",
                path,
                type(exc).__name__,
                exc,
            )
            return empty_candles()

    def write(self, exchange: str, symbol: str, timeframe: str, df: pd.DataFrame) -> Path:
        """Validate ``df`` and replace the cache file with it atomically."""
        validate_candles(df, symbol)
        path = self.path(exchange, symbol, timeframe)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            self._writer(df, tmp)
            with open(tmp, "rb") as fh:  # the data must be on disk before the rename
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.debug("cached %d candles of %s %s at %s", len(df), symbol, timeframe, path)
        return path

    @staticmethod
    def merge(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        """Union of both frames, sorted by time; on equal timestamps the row of ``new`` wins."""
        if len(new) == 0:
            return existing.sort_index()
        both = new if len(existing) == 0 else pd.concat([existing, new])
        both = both[~both.index.duplicated(keep="last")]
        return both.sort_index()
