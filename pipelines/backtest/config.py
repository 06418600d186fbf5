"""The ``backtest:`` config section checked where its values are defined, and ``--range`` parsing.

The simulator's options (cash, commission, fill, ...) are checked by ``BacktestSpec`` itself;
this module only translates its ``BacktestError`` into a ``ConfigError`` that names the
config key, and checks the options that belong to model-driven backtests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pandas as pd

from pipelines.backtest.semantics import AtEnd, BacktestSpec, Direction, Fill, Units
from pipelines.errors import BacktestError, ConfigError

if TYPE_CHECKING:
    from conf.schema import BacktestConfig

WALK_FORWARD_MODES: tuple[str, ...] = ("none", "pivots_only", "every_candle")


def backtest_spec(cfg: BacktestConfig) -> BacktestSpec:
    """The simulator semantics of a ``backtest:`` section; a bad value is a ``ConfigError``."""
    try:
        # the config holds plain strings; BacktestSpec checks each against its Literal choices
        return BacktestSpec(
            cash=cfg.cash,
            commission=cfg.commission,
            fill=cast(Fill, cfg.fill),
            direction=cast(Direction, cfg.direction),
            units=cast(Units, cfg.units),
            at_end=cast(AtEnd, cfg.at_end),
            bars_per_year=cfg.bars_per_year,
        )
    except BacktestError as exc:
        # "backtest fill='x' is not allowed; ..." -> "backtest.fill='x' ...": the config key
        raise ConfigError(str(exc).replace("backtest ", "backtest.", 1)) from exc


def check_backtest_config(cfg: BacktestConfig) -> None:
    backtest_spec(cfg)
    if cfg.walk_forward not in WALK_FORWARD_MODES:
        raise ConfigError(
            f"backtest.walk_forward={cfg.walk_forward!r} is not allowed; choose one of "
            f"{list(WALK_FORWARD_MODES)} (none: no training during the backtest)"
        )
    if not 0.0 <= cfg.confidence <= 1.0:
        raise ConfigError(
            f"backtest.confidence={cfg.confidence!r} must be a probability in [0, 1] "
            "(0: always act on the most likely action)"
        )
    if cfg.inference_batch < 1:
        raise ConfigError(
            f"backtest.inference_batch={cfg.inference_batch} must be >= 1 (e.g. 256 on CPU)"
        )
    if cfg.retrain_every < 1 or cfg.retrain_epochs < 1:
        raise ConfigError(
            f"backtest.retrain_every={cfg.retrain_every} and backtest.retrain_epochs="
            f"{cfg.retrain_epochs} must be >= 1 (e.g. retrain_every=256, retrain_epochs=1)"
        )
    if not cfg.task_num_cpus > 0:
        raise ConfigError(
            f"backtest.task_num_cpus={cfg.task_num_cpus} must be > 0 (fractions such as 0.5 are fine)"
        )
    since = _timestamp(cfg.since, "backtest.since")
    until = _timestamp(cfg.until, "backtest.until")
    if since is not None and until is not None and since > until:
        raise ConfigError(
            f"backtest.since={cfg.since!r} is after backtest.until={cfg.until!r}; "
            "give the start first (e.g. --range 2024-01-01:2024-03-01)"
        )


def _timestamp(text: str | None, what: str) -> pd.Timestamp | None:
    if text is None:
        return None
    try:
        ts = pd.to_datetime(text, format="ISO8601")  # not pd.Timestamp: it reads "March" as a date
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{what}={text!r} is not an ISO date; use e.g. 2024-01-01 or 2024-01-01T12:00 "
            "(UTC unless it names a zone)"
        ) from exc
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def parse_range(text: str) -> tuple[str | None, str | None]:
    """``START:END`` (dates) or ``START..END`` (dates or times) → (since, until) as naive UTC ISO text.

    Either side may be empty (``2024-01-01:`` runs to the end). Times need ``..`` because
    ``:`` also separates hours from minutes.
    """
    parts = text.split("..") if ".." in text else text.split(":")
    if len(parts) != 2:
        raise ConfigError(
            f"--range {text!r} must be START:END with ISO dates (e.g. 2024-01-01:2024-03-01), "
            "or START..END when a side has a time (2024-01-01T09:00..2024-01-02); "
            "either side may be empty"
        )
    start, end = (
        _timestamp(raw.strip() or None, f"--range {side}")
        for side, raw in zip(("start", "end"), parts, strict=True)
    )
    if start is not None and end is not None and start > end:
        raise ConfigError(
            f"--range {text!r}: the start is after the end; give START:END in that order"
        )
    return (None if start is None else start.isoformat(), None if end is None else end.isoformat())
