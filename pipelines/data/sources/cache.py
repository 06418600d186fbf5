"""Parquet cache of candles: one file per (exchange, symbol, timeframe), under a local folder
or any fsspec URI (``data.cache_dir=s3://bucket/cache``: every node then shares one cache).

Writes are atomic: on a local disk the frame goes to a temporary file in the same folder,
which then replaces the old file with ``os.replace``; on an object store it is written to a
local temporary file and uploaded as one whole-object put. Either way a crash mid-write leaves
the old file whole. A cache file that cannot be parsed is logged and treated as empty, so the
next write replaces it; a broken file never stops a fetch. A store that cannot be used at all
(missing bucket, refused credentials, unreachable endpoint) is a ``StorageError`` naming
``data.cache_dir``, when the cache is opened.
"""

from __future__ import annotations

import io
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
from pipelines.storage import is_local, open_store, translated

logger = logging.getLogger(__name__)

Writer = Callable[[pd.DataFrame, Path], None]


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path)


def _safe(name: str) -> str:
    # percent-encoding keeps names reversible and distinct ("BTC/USDT" vs "BTC-USDT")
    return quote(name, safe="-.")


class CandleCache:
    """Candles stored under ``root/<exchange>/<symbol>_<timeframe>.parquet``.

    ``writer`` writes a frame to a local path (the temporary file); it is injectable so tests
    can make a write fail halfway and check that the old file survives.
    """

    SETTING = "data.cache_dir"

    def __init__(self, root: str | Path, *, writer: Writer = _write_parquet) -> None:
        self.uri = str(root)
        self._local = is_local(self.uri)
        self.root: Path | str
        if self._local:
            self.root = Path(root)
        else:
            self._fs, base = open_store(self.uri, setting=self.SETTING)
            self.root = base.rstrip("/")
        self._writer = writer

    def path(self, exchange: str, symbol: str, timeframe: str) -> Path | str:
        """The cache file: a Path on a local disk, else a path in the store's filesystem."""
        name = f"{_safe(symbol)}_{_safe(timeframe)}.parquet"
        if isinstance(self.root, Path):
            return self.root / _safe(exchange) / name
        return f"{self.root}/{_safe(exchange)}/{name}"

    def _read_bytes(self, path: str) -> bytes | None:
        with translated(setting=self.SETTING, uri=self.uri, action=f"reading {path}"):
            try:
                return bytes(self._fs.cat_file(path))
            except FileNotFoundError:
                return None

    def read(self, exchange: str, symbol: str, timeframe: str) -> pd.DataFrame:
        """The cached candles, or an empty frame when there is no (readable) cache file."""
        path = self.path(exchange, symbol, timeframe)
        if isinstance(path, Path):
            if not path.exists():
                return empty_candles()
            source: Path | io.BytesIO = path
        else:
            blob = self._read_bytes(path)
            if blob is None:
                return empty_candles()
            source = io.BytesIO(blob)
        try:
            df = normalize_columns(pd.read_parquet(source))
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

    def write(self, exchange: str, symbol: str, timeframe: str, df: pd.DataFrame) -> Path | str:
        """Validate ``df`` and replace the cache file with it atomically."""
        validate_candles(df, symbol)
        path = self.path(exchange, symbol, timeframe)
        if not isinstance(path, Path):
            self._put(df, path)
            logger.debug("cached %d candles of %s %s at %s", len(df), symbol, timeframe, path)
            return path
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

    def _put(self, df: pd.DataFrame, path: str) -> None:
        """Write locally, then upload whole: the object store never holds half a file."""
        with tempfile.TemporaryDirectory(prefix="candleray-cache-") as tmp:
            local = Path(tmp) / "candles.parquet"
            self._writer(df, local)
            with translated(setting=self.SETTING, uri=self.uri, action=f"writing {path}"):
                self._fs.put_file(str(local), path)

    @staticmethod
    def merge(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        """Union of both frames, sorted by time; on equal timestamps the row of ``new`` wins."""
        if len(new) == 0:
            return existing.sort_index()
        both = new if len(existing) == 0 else pd.concat([existing, new])
        both = both[~both.index.duplicated(keep="last")]
        return both.sort_index()
