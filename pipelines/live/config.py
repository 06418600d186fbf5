"""Live modes and the settings a session runs with, taken from the resolved config once.

Modes (what a session trains on; every mode predicts, settles and paper-trades):

* ``none``: never trains.
* ``pivots_only``: each confirmed pivot once (low pivot -> BUY, high pivot -> SELL).
* ``every_candle``: every closed candle: the pivot action where the bar is a pivot, else the
  price-move rule (``labels.move_threshold``).
* ``manual``: only when a person asks (``Session.manual_sample``).

Label timing: the sample of bar t is queued at the close of bar t + max(1, labels.pivot_bars),
when its label is final -- ``pipelines.backtest.walk_forward.label_known_at``'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conf.schema import Config, LiveConfig
from pipelines.backtest.config import backtest_spec
from pipelines.backtest.semantics import BacktestSpec
from pipelines.errors import ConfigError, ModeError

MODES: tuple[str, ...] = ("none", "pivots_only", "every_candle", "manual")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ModeError(
            f"live mode {mode!r} is not known; choose one of {list(MODES)} "
            "(none: predict only; manual: train when asked)"
        )
    return mode


def check_live_config(cfg: LiveConfig) -> None:
    """Raise ``ConfigError`` naming the ``live.*`` key whose value is not allowed."""
    for key in ("hosts", "rolling_window", "queue_capacity", "trend_window"):
        value = getattr(cfg, key)
        if value < 1:
            raise ConfigError(f"live.{key}={value} must be >= 1")
    if not cfg.journal_dir:
        raise ConfigError("live.journal_dir is empty; name a folder, e.g. live")


def journal_path(cfg: Config) -> Path:
    """The model's journal: ``<run.home>/<live.journal_dir>/<run.name>.sqlite``."""
    folder = Path(cfg.live.journal_dir).expanduser()
    if not folder.is_absolute():
        folder = Path(cfg.run.home).expanduser() / folder
    return folder / f"{cfg.run.name}.sqlite"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What every session of one model shares. ``extra_timeframes`` must be the model's."""

    window: int
    extra_timeframes: tuple[str, ...]
    pivot_bars: int
    move_threshold: float
    confidence: float
    spec: BacktestSpec
    rolling_window: int = 100

    @property
    def label_lag(self) -> int:
        """Bars between a bar and the close at which its training label is final."""
        return max(1, self.pivot_bars)

    @classmethod
    def from_config(cls, cfg: Config) -> SessionSettings:
        """Paper trades use the ``backtest:`` semantics and confidence rule: one definition."""
        check_live_config(cfg.live)
        return cls(
            window=cfg.features.window,
            extra_timeframes=tuple(cfg.data.extra_timeframes),
            pivot_bars=cfg.labels.pivot_bars,
            move_threshold=cfg.labels.move_threshold,
            confidence=cfg.backtest.confidence,
            spec=backtest_spec(cfg.backtest),
            rolling_window=cfg.live.rolling_window,
        )
