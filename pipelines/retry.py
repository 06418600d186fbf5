"""The one retry helper: retries a call while it fails with ``TemporaryError``.

Callers translate third-party errors first (network, rate limit, 5xx, timeout become
``TemporaryError``); anything else is not worth retrying and propagates at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.errors import DataSourceError, TemporaryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def retry(
    fn: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn()`` up to ``attempts`` times, waiting ``backoff_s`` (doubling, at most
    ``backoff_max_s``) after each ``TemporaryError``.

    Raises ``DataSourceError`` naming ``what``, the number of attempts and the last error
    (chained) when every attempt failed; any other exception propagates from the first try.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if backoff_s < 0 or backoff_max_s < 0:
        raise ValueError(
            f"backoff_s and backoff_max_s must be >= 0, got {backoff_s}, {backoff_max_s}"
        )
    delay = min(backoff_s, backoff_max_s)
    last: TemporaryError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TemporaryError as exc:
            last = exc
            if attempt == attempts:
                break
            logger.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.2fs",
                what,
                attempt,
                attempts,
                exc,
                delay,
            )
            sleep(delay)
            delay = min(delay * 2, backoff_max_s)
    raise DataSourceError(
        f"{what} failed {attempts} time(s) in a row; last error: {last}. "
        "The source is down, rate-limiting or answering garbage; try again later, or allow "
        "more attempts / longer waits (data.ccxt.max_retries, backoff_s, backoff_max_s)"
    ) from last
