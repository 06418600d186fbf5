"""The batched model in a replica: ``@serve.batch`` inference that follows the ModelActor.

Each replica finds the ModelActor by name, loads its newest weights before taking
requests, and then polls the actor's cheap ``weights_version`` every ``serve.weights_poll_s``
(0.2 s) in a background task, so a newly published version is served within a second,
with no restart. Batching knobs arrive as ``user_config`` and are checked by
``reconfigure()``; replicas and CPUs/GPUs per replica come from ``serve.*`` through
``.options(...)``.

``ModelReplica`` is that replica's behaviour as a mixin: the HTTP ingress of
``serve.topology=single`` (``serve.app``) holds it itself, so ``/predict`` is one Serve hop;
``BatchedPredictor`` is the deployment of ``serve.topology=composed``. Compose it into an app
with ``build_predictor_app(cfg)`` (a bound deployment) and call it through a
``DeploymentHandle``::

    handle = serve.run(build_predictor_app(cfg), name="predictor", route_prefix=None)
    answers = handle.predict.remote(x).result()  # x (B, T, F) → B WindowPredictions
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve
from ray.serve.deployment import Application, Deployment

from actors import ModelClient, spec_from_config
from conf import Config
from pipelines.errors import ActorCallTimeout, CandlerayError
from serve.batched import WeightFollower, WindowPrediction, check_request, predict_batch
from serve.config import Batching, deployment_options, parse_batching

log = logging.getLogger(__name__)


class ActorWeights:
    """The ModelActor's published weights, read without blocking the replica's event loop."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client

    async def _call(self, method: str) -> Any:
        try:
            return await asyncio.wait_for(self.client.submit(method), self.client.timeout_s)
        except asyncio.TimeoutError as exc:
            raise ActorCallTimeout(
                f"ModelActor {self.client.name!r}.{method} did not answer within "
                f"{self.client.timeout_s:.1f}s (ray.call_timeout_s); serving the loaded weights"
            ) from exc

    async def version(self) -> tuple[str | None, int]:
        generation, version = await self._call("weights_version")
        return generation, version

    async def snapshot(self) -> dict[str, Any]:
        snap = await self._call("weights_snapshot")
        return {**snap, "state": await snap["ref"]}


class ModelReplica:
    """What a replica that holds the model does, whichever deployment it is: the batched
    predictor (``serve.topology=composed``) or the HTTP ingress itself (``single``).

    A mixin rather than a deployment, so the ``@serve.batch`` queue lives in the replica that
    serves ``/predict``; the logic is ``serve.batched``'s. ``predict``/``info`` are async, the
    interface ``serve.backend.RayBackend`` calls (``serve.backend.HandlePredictor`` gives a
    ``DeploymentHandle`` the same one).
    """

    async def _start_model(self, cfg: Config) -> None:
        self.serve_cfg = cfg.serve
        ctx = serve.get_replica_context()
        self.replica, self.deployment = ctx.replica_tag, ctx.deployment
        self.follower = WeightFollower(
            spec_from_config(cfg), cfg.model.device, ActorWeights(ModelClient.find(cfg))
        )
        await self.follower.refresh()
        self._poll = asyncio.get_running_loop().create_task(
            self.follower.follow(cfg.serve.weights_poll_s)
        )
        self.batching = Batching.of(cfg.serve)
        self._apply(self.batching)
        self.forward_passes = 0

    def _apply(self, b: Batching) -> None:
        self._batched.set_max_batch_size(b.max_batch_size)
        self._batched.set_batch_wait_timeout_s(b.batch_wait_timeout_s)
        self.batching = b

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """New batching knobs; ConfigError for a bad value, and the old ones stay in force."""
        b = parse_batching(user_config, self.serve_cfg)
        self._apply(b)
        log.info("batching: %s", b)

    async def predict(self, windows: np.ndarray) -> list[WindowPrediction]:
        """(B, T, F) windows → B answers, each naming the weights version that made it.

        The request is checked here, alone (InvalidInputError for a bad shape, NaN/inf, or
        past serve.max_request_bytes), and then joins a batch: concurrent requests share
        one forward pass.
        """
        x = check_request(self.follower.spec, windows, self.serve_cfg.max_request_bytes)
        return await self._batched(x)

    @serve.batch  # size and wait are set per replica from config in __init__/reconfigure
    async def _batched(self, requests: list[np.ndarray]) -> list[list[WindowPrediction]]:
        predictor = self.follower.predictor  # one reference: the whole batch uses one version
        self.forward_passes += 1
        # On the event loop, not in a thread: requests arriving during the pass queue up and
        # form the next batch together. With the pass in a thread, Serve would cut each
        # arrival into a batch of its own that then waits for this one (one batch at a time).
        return predict_batch(predictor, requests, self.replica, self.forward_passes)

    async def info(self) -> dict[str, Any]:
        """This replica's state: id and deployment, weights served, batching in force, forward
        passes so far."""
        p = self.follower.predictor
        return {
            "replica": self.replica,
            "deployment": self.deployment,
            "version": p.version,
            "generation": p.generation,
            "loaded_at": self.follower.loaded_at,
            "batching": self.batching.user_config(),
            "forward_passes": self.forward_passes,
            "weights_error": self.follower.last_error,
        }

    def check_health(self) -> None:
        """Serve restarts a replica whose weight poller died (it would serve stale weights)."""
        if self._poll.done():
            raise CandlerayError(f"replica {self.replica}: the weights poller stopped")


@serve.deployment
class BatchedPredictor(ModelReplica):
    """The predictor of ``serve.topology=composed``, called through a ``DeploymentHandle``."""

    # Ray actors (and so Serve replicas) allow an async __init__, which lets the replica load
    # its first weights before it takes a request; Python's typing says __init__ returns None
    async def __init__(self, cfg: Config) -> None:  # type: ignore[misc]
        await self._start_model(cfg)


def predictor_deployment(cfg: Config) -> Deployment:
    """The deployment with replicas, CPUs/GPUs per replica and batching from ``cfg.serve``."""
    # @serve.deployment turns the class into a Deployment; mypy keeps a decorated class's type
    return BatchedPredictor.options(**deployment_options(cfg.serve))  # type: ignore[attr-defined]


def build_predictor_app(cfg: Config) -> Application:
    """The bound predictor (``.bind(cfg)``) to deploy alone or compose into the ingress."""
    return predictor_deployment(cfg).bind(cfg)
