"""Load the configuration as every entry point does: ``conf``'s schema, then the checks
that need domain code (timeframe grammar, backtest semantics).

``conf`` knows nothing of ``pipelines`` beyond its errors, so the rules that belong to a
feature stay with that feature and are applied here, once, at load time.
"""

from __future__ import annotations

from collections.abc import Sequence

import conf
from conf import Config
from pipelines.backtest.config import check_backtest_config
from pipelines.data.annotations import check_annotation_config
from pipelines.data.candles import timeframe_seconds
from pipelines.errors import ConfigError
from pipelines.live.config import check_live_config

__all__ = ["check", "load_config"]


def check(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the key when a value breaks a domain rule."""
    check_backtest_config(cfg.backtest)
    check_live_config(cfg.live)
    check_annotation_config(cfg.annotations)
    base = timeframe_seconds(cfg.data.timeframe)
    for tf in cfg.data.extra_timeframes:
        if timeframe_seconds(tf) <= base:
            raise ConfigError(
                f"data.extra_timeframes: {tf!r} must be coarser than data.timeframe={cfg.data.timeframe!r}"
            )


def load_config(
    profile: str | None = None, overrides: Sequence[str] = (), *, resolve_paths: bool = True
) -> Config:
    """``conf.load_config`` (defaults < profile < dotted overrides), then the domain checks."""
    cfg = conf.load_config(profile, overrides, resolve_paths=resolve_paths)
    check(cfg)
    return cfg
