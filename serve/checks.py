"""Bounds on what a request may carry, as plain functions the API's models and routes use.

- ``time_in_range``: a time pandas can hold (nanoseconds since 1970 in an int64, 1677-2262),
  with a margin so that a window's next candle still fits.
- ``timeframe_in_range``: a timeframe the grammar knows and at most ``MAX_TIMEFRAME``.
- ``checkpoint_choice``: a backtest's checkpoint, only from the store's own listing.
- ``safe_errors``: validation errors a client can be sent: no input echoed whole, nothing
  JSON cannot encode (NaN, infinity).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines.data.candles import timeframe_seconds
from pipelines.errors import ConfigError, NotFoundError

UTC = dt.timezone.utc
EARLIEST = dt.datetime(1678, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(2261, 12, 31, tzinfo=UTC)
MAX_ECHO_CHARS = 80  # a bad value is shown back up to this long


def time_in_range(t: dt.datetime) -> dt.datetime:
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    if not EARLIEST <= aware <= LATEST:
        raise ValueError(
            f"a time between {EARLIEST.date()} and {LATEST.date()} (UTC), the range the "
            "candle clock can hold"
        )
    return t


def timeframe_in_range(timeframe: str) -> str:
    try:
        timeframe_seconds(timeframe)  # the grammar and the bound (at most MAX_TIMEFRAME)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return timeframe


def checkpoint_choice(wanted: str, listed: Iterable[Mapping[str, Any]]) -> str:
    """``wanted`` as the path the store lists (by path or name), or "best" / "latest" when
    there is one; NotFoundError otherwise. Nothing the client names is opened or fetched."""
    items = list(listed)
    shown = wanted if len(wanted) <= 200 else wanted[:200] + "..."
    if wanted in ("best", "latest"):
        has = bool(items) if wanted == "latest" else any(c.get("is_best") for c in items)
        if has:
            return wanted
        raise NotFoundError(
            f"no {wanted} checkpoint yet: GET /checkpoints lists none"
            + (" marked best (POST /checkpoints/best marks one)" if items else "")
            + "; leave 'checkpoint' out to backtest the model's current weights"
        )
    for c in items:
        if wanted in (c.get("path"), c.get("name")):
            return str(c["path"])
    raise NotFoundError(
        f"no checkpoint {shown!r}: give a path or name that GET /checkpoints lists, "
        "'best', 'latest', or leave 'checkpoint' out for the model's current weights"
    )


def _shown(value: Any) -> Any:
    """A bad input as it may be sent back: finite scalars, text cut short; else nothing."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
    return None


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's errors as FastAPI lists them (``loc``, ``msg``, ``type``), with ``input``
    only where it is small and JSON-safe; ``ctx`` and ``url`` are left out."""
    out = []
    for e in errors:
        item: dict[str, Any] = {
            "loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        shown = _shown(e.get("input"))
        if shown is not None:
            item["input"] = shown
        out.append(item)
    return out
