"""The ModelActor: one named, sync Ray actor per model that owns weights and optimizer.

Training methods run in the actor's default concurrency group, whose concurrency is 1:
Ray runs them one at a time, so training is serialized by construction, with no lock.
Read-only methods (metrics, weight snapshots, checkpoint listing) run in a separate
``read`` group so predictors never wait behind a long training call; they only see
snapshots that the training thread published whole.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.model.core import ModelCore
from conf import Config
from pipelines.errors import ActorCallTimeout, CandlerayError
from pipelines.placement import Request, exists, reserve

log = logging.getLogger(__name__)

READ = "read"


@ray.remote(concurrency_groups={READ: 2})
class ModelActor:
    def __init__(self, cfg: Config) -> None:
        logging.basicConfig(level=logging.INFO)
        self.core = ModelCore(cfg, writer="process")
        self._snap_ref: tuple[tuple[str, int], Any] | None = None

    # -- training (default group, one at a time) --------------------------------------------
    def train_batch(
        self, x: Any, y_candle: Any, y_action: Any, kind: str = "manual"
    ) -> dict[str, Any]:
        return self.core.train_batch(x, y_candle, y_action, kind)

    def train_samples(
        self, data: Any, indices: Any = None, batch_size: int | None = None, kind: str = "batch"
    ) -> list[dict[str, float]]:
        return self.core.train_samples(data, indices, batch_size, kind)

    def train_epochs(
        self,
        data: Any,
        epochs: int,
        batch_size: int | None = None,
        seed: int = 0,
        kind: str = "batch",
    ) -> list[dict[str, float]]:
        return self.core.train_epochs(data, epochs, batch_size, seed, kind)

    def save_checkpoint(self, kind: str = "manual", is_best: bool = False) -> dict[str, Any]:
        return self.core.save_checkpoint(kind, is_best)

    def load_checkpoint(self, path: str | None = None) -> dict[str, Any]:
        return self.core.load_checkpoint(path)

    def mark_best(self, path: str) -> dict[str, Any]:
        return self.core.mark_best(path)

    def set_data_window(self, window: dict[str, Any]) -> None:
        self.core.set_data_window(window)

    def log_evaluation(
        self,
        metrics: dict[str, float],
        step: int | None = None,
        artifacts: dict[str, dict] | None = None,
    ) -> None:
        self.core.log_evaluation(metrics, step, artifacts)

    def flush_tracking(self) -> dict[str, Any]:
        return self.core.flush_tracking()

    def close(self, status: str = "FINISHED") -> dict[str, Any]:
        return self.core.close(status)

    # -- reads (own group; never wait behind training) --------------------------------------
    @ray.method(concurrency_group=READ)
    def metrics(self) -> dict[str, Any]:
        return dict(self.core.summary)

    @ray.method(concurrency_group=READ)
    def weights_version(self) -> tuple[str, int]:
        s = self.core.snapshot
        return s.generation, s.version

    @ray.method(concurrency_group=READ)
    def weights_snapshot(self) -> dict[str, Any]:
        """{generation, version, spec, ref}: ``ref`` is an ObjectRef to the CPU state dict.

        The state dict is put in the object store once per version; every predictor that
        asks for that version gets the same ref.
        """
        s = self.core.snapshot
        key = (s.generation, s.version)
        cached = self._snap_ref
        if cached is None or cached[0] != key:
            cached = (key, ray.put(s.state))
            self._snap_ref = cached
        return {"generation": s.generation, "version": s.version, "spec": s.spec, "ref": cached[1]}

    @ray.method(concurrency_group=READ)
    def tracking_status(self) -> dict[str, Any]:
        """The MLflow writer's status, read only (GET /health): never behind training."""
        return self.core.tracking_status()

    @ray.method(concurrency_group=READ)
    def list_checkpoints(self) -> list[dict[str, Any]]:
        return self.core.list_checkpoints()


def model_request(cfg: Config) -> Request:
    """What the ModelActor asks Ray for: ``ray.actor_num_cpus/actor_num_gpus/actor_resources``."""
    r = cfg.ray
    return Request(
        f"the ModelActor {cfg.run.name!r}",
        r.actor_num_cpus,
        "ray.actor_num_cpus",
        r.actor_resources,
        "ray.actor_resources",
        num_gpus=r.actor_num_gpus,
        gpus_key="ray.actor_num_gpus",
    )


def model_actor(cfg: Config) -> Any:
    """Get the model's named actor, creating it if needed (any process finds it by name).

    A new one is created only once its resources can be placed: ``PlacementError`` at once
    when no node has them, or after ``ray.placement_timeout_s`` when they stay busy.
    """
    request = model_request(cfg)
    if not exists(cfg.run.name, cfg.ray.namespace):  # a running one holds its resources
        reserve(request, 1, cfg.ray.placement_timeout_s, "ray.placement_timeout_s")
    opts: dict[str, Any] = {
        "name": cfg.run.name,
        "namespace": cfg.ray.namespace,
        "get_if_exists": True,
        "max_restarts": cfg.ray.max_restarts,
        "max_task_retries": 0,  # a train call is not replayed after a crash: it resumes from the checkpoint
        **request.options(),
    }
    if cfg.ray.detached:
        opts["lifetime"] = "detached"
    # @ray.remote turns the class into an ActorClass; mypy keeps a decorated class's own type
    return ModelActor.options(**opts).remote(cfg)  # type: ignore[attr-defined]


class ModelClient:
    """Every call the platform makes into the ModelActor goes through here, with a deadline."""

    def __init__(self, handle: Any, timeout_s: float, name: str = "model") -> None:
        self.handle = handle
        self.timeout_s = timeout_s
        self.name = name

    @classmethod
    def connect(cls, cfg: Config) -> ModelClient:
        """The model's actor, created when missing: for drivers (CLI, ``candleray serve``)."""
        return cls(model_actor(cfg), cfg.ray.call_timeout_s, cfg.run.name)

    @classmethod
    def find(cls, cfg: Config) -> ModelClient:
        """The running ModelActor, found by name and never created: for actors, replicas and
        tasks. An actor is owned by the process that creates it and dies with it, so one made by
        a session host or a job task would vanish when that host restarts or the task ends."""
        try:
            handle = ray.get_actor(cfg.run.name, namespace=cfg.ray.namespace)
        except ValueError as exc:
            raise CandlerayError(
                f"no ModelActor {cfg.run.name!r} in Ray namespace {cfg.ray.namespace!r}: start it "
                "first (candleray serve and candleray live do; in code ModelClient.connect(cfg))"
            ) from exc
        return cls(handle, cfg.ray.call_timeout_s, cfg.run.name)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        return getattr(self.handle, method).remote(*args, **kwargs)

    def wait(self, ref: ray.ObjectRef, method: str, timeout_s: float | None = None) -> Any:
        t = self.timeout_s if timeout_s is None else timeout_s
        try:
            return ray.get(ref, timeout=t)
        except ray.exceptions.GetTimeoutError as exc:
            raise ActorCallTimeout(
                f"ModelActor {self.name!r}.{method} did not answer within {t:.1f}s (ray.call_timeout_s); "
                "the actor may be busy with a long training call or hung — inference goes on from the "
                "last published weights; raise ray.call_timeout_s for long calls"
            ) from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CandlerayError):
                raise exc.cause from None  # the user's error, not Ray's wrapper around it
            raise
        except ray.exceptions.RayActorError as exc:
            if "creation task" in str(exc):  # __init__ raised: a restart would fail the same way
                cause = (
                    str(exc).strip().splitlines()[-1]
                )  # the constructor's error, last in the trace
                raise CandlerayError(f"ModelActor {self.name!r} could not start: {cause}") from exc
            raise CandlerayError(
                f"ModelActor {self.name!r} died during {method}; Ray restarts it "
                f"(ray.max_restarts) from its newest checkpoint: {exc}"
            ) from exc

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return self.wait(self.submit(method, *args, **kwargs), method, timeout_s)
