"""The one exception hierarchy of candleray.

Every error a user can cause says what was wrong, what is allowed, and how to
fix it. Third-party errors (ccxt, Ray, MLflow, torch) are translated at the
boundary that calls them: ``raise SomeCandlerayError(msg) from exc``.
"""

from __future__ import annotations


class CandlerayError(Exception):
    """Base class of every error candleray raises on purpose."""


class ConfigError(CandlerayError):
    """A configuration file or override is wrong (unknown key, wrong type, bad value)."""


class CandleValidationError(CandlerayError):
    """A candle frame breaks the schema; the message names symbol, row and rule."""

    def __init__(
        self, message: str, *, symbol: str = "?", row: object = None, rule: str = ""
    ) -> None:
        super().__init__(message)
        self.symbol = symbol
        self.row = row
        self.rule = rule


class DataSourceError(CandlerayError):
    """Market data could not be obtained (unknown symbol, exchange error, bad answer)."""


class TemporaryError(DataSourceError):
    """A failure that may pass if retried (network, rate limit, 5xx, timeout)."""


class InvalidInputError(CandlerayError):
    """A batch, window or request that the model refuses; nothing was changed."""


class ModeError(InvalidInputError):
    """A live session was asked for something its training mode does not do (e.g. manual
    training outside ``manual`` mode); the message names the mode and how to switch."""


class PartialTrainingError(CandlerayError):
    """A training call failed part-way: its first ``steps_applied`` steps (on its first
    ``samples_applied`` samples) stay applied and are published as weights ``version``.

    Retrying the whole call would train those samples twice; the message says what to do.
    """

    def __init__(
        self,
        message: str,
        *,
        steps_applied: int = 0,
        samples_applied: int = 0,
        version: int | None = None,
    ) -> None:
        super().__init__(message)  # attributes travel in __dict__, so they survive pickling
        self.steps_applied = steps_applied
        self.samples_applied = samples_applied
        self.version = version


class AnnotationError(InvalidInputError):
    """A marked trade (annotation) that the store refuses; the message names the rule it
    breaks and how to fix it. Nothing was stored."""


class ActorCallTimeout(CandlerayError):
    """A call into an actor missed its deadline; the message names the call."""


class TrainingRanksError(CandlerayError):
    """A data-parallel training step failed on its ranks (one died, hung past its deadline,
    or the group could not start): the step was not applied, the ModelActor keeps the last
    weights every rank agreed on and rebuilds the group on its next training call."""


class JournalError(CandlerayError):
    """A live journal write did not commit (disk full, I/O error); nothing of it was kept in
    the file, and the sessions still hold its records for the next write."""


class CheckpointError(CandlerayError):
    """A checkpoint could not be written, found or loaded."""


class TrackingError(CandlerayError):
    """MLflow refused a write or could not be reached."""


class BacktestError(CandlerayError):
    """A backtest was asked for with inputs it cannot run on."""


class NotFoundError(CandlerayError):
    """A named thing does not exist (session, job, checkpoint, annotation, symbol); the
    message names what was asked for and how to list what exists."""


class ConflictError(CandlerayError):
    """A request that conflicts with work under way or done (a second training job while one
    runs, cancelling a finished job); the message names it and what to do. Nothing changed."""


class CapacityError(CandlerayError):
    """A configured limit is reached (sessions per host, running jobs); the message names the
    limit, its config key and how to make room. Nothing changed; retry once there is room."""


class UnavailableError(CandlerayError):
    """A component a request needs is not running (session hosts, ModelActor, predictor);
    the message names it and how to start it. Retrying once it is up may succeed."""


class StorageError(CandlerayError):
    """A storage URI (checkpoints, candle cache, staged uploads, reports) cannot be used:
    missing bucket, refused credentials, unreachable endpoint. The message names the setting,
    the URI, what failed and the fix."""


class PlacementError(CandlerayError):
    """An actor, replica or task asks for resources the Ray cluster cannot give: no node has
    them, or those that do keep them busy past ``ray.placement_timeout_s``. The message names
    the config key, the resource and what the cluster offers. Nothing was created."""


class ClusterError(CandlerayError):
    """The Ray cluster of ``ray.address`` cannot be reached or joined; the message names the
    setting, what failed and how to fix it."""


class DatabaseError(UnavailableError):
    """The database of the session journals and annotations (``run.database_url``, or the
    SQLite files under ``run.home``) cannot be reached or used: unreachable server, refused
    password, missing database. The message names the setting, what failed and the fix (the
    API answers 503: the server's side, not the request, is wrong)."""
