"""The Serve application, in one of two topologies (``serve.topology``):

    app = build_app(cfg)      # single:   ModelIngress.bind(cfg)       one hop: proxy → ingress
                              # composed: Ingress.bind(BatchedPredictor.bind(cfg), cfg)
    handle = start(cfg)       # Serve HTTP on serve.host:serve.port, app at "/"

single (the default): each HTTP ingress replica holds the batched model itself (the
``@serve.batch`` queue and weights follower of ``serve.predictor_app.ModelReplica``), so a
``/predict`` costs one Serve hop; ``serve.replicas``/``serve.replica_*`` place it. composed:
CPU ingress replicas (``serve.ingress_*``) call predictor replicas (``serve.replicas``, e.g.
with GPUs) through a ``DeploymentHandle``: a second hop, worth it when a few GPU predictors
are shared by many ingress replicas (bench/RESULTS.md).

Either ingress builds its FastAPI app at replica start (``__serve_build_asgi_app__``) from the
plain ``serve.api.build_api`` over a ``serve.backend.RayBackend``, so the routes are the same
code the tests drive. The ModelActor, the session hosts and the JobBoard are found by name.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from conf import Config, ServeConfig
from pipelines.placement import check_cluster
from serve.api import build_api
from serve.backend import HandlePredictor, RayBackend
from serve.config import (
    http_options,
    ingress_options,
    ingress_request,
    model_ingress_options,
    replica_request,
)
from serve.predictor_app import ModelReplica, build_predictor_app
from serve.security import check_security

log = logging.getLogger(__name__)

INGRESS = "Ingress"  # the deployment HTTP requests land on, in both topologies


def model_deployment(s: ServeConfig) -> str:
    """The deployment whose replicas hold the model and answer ``/predict``'s forward passes."""
    return INGRESS if s.topology == "single" else "BatchedPredictor"


# replicas and CPUs come from serve.ingress_* in build_app; these are only the defaults
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """serve.topology=composed: the routes, with the predictor deployment behind a handle."""

    def __init__(self, predictor: DeploymentHandle, cfg: Config) -> None:
        check_security(cfg.serve)
        self.cfg = cfg
        if cfg.serve.predictor_transport == "grpc":
            # Serve's own switch (Ray 2.60): by value over gRPC instead of Ray object refs
            predictor = predictor.options(_by_reference=False)
        self.backend = RayBackend(cfg, HandlePredictor(predictor))

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.backend, self.cfg.serve)


# options (replicas, resources, batching as user_config) come from serve.* in build_app; named
# as composed's ingress: HTTP lands on "Ingress" in both topologies
@serve.deployment(name=INGRESS)
@serve.ingress()
class ModelIngress(ModelReplica):
    """serve.topology=single: the routes and the batched model in one replica."""

    # Ray actors allow an async __init__: the first weights load before a request is taken
    async def __init__(self, cfg: Config) -> None:  # type: ignore[misc]
        check_security(cfg.serve)
        await self._start_model(cfg)
        self.cfg = cfg
        self.backend = RayBackend(cfg, self)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.backend, self.cfg.serve)


def build_app(cfg: Config) -> Application:
    """The whole app, bound, in the topology ``serve.topology`` names."""
    check_security(cfg.serve)
    s = cfg.serve
    if s.topology == "single":
        _warn_unused_ingress_settings(s)
        # @serve.deployment turns the class into a Deployment; mypy keeps a decorated class's type
        return ModelIngress.options(**model_ingress_options(s)).bind(cfg)  # type: ignore[attr-defined]
    ingress = Ingress.options(**ingress_options(s))  # type: ignore[attr-defined]
    return ingress.bind(build_predictor_app(cfg), cfg)


def _warn_unused_ingress_settings(s: ServeConfig) -> None:
    default = ServeConfig()
    unused = [
        k
        for k in ("ingress_replicas", "ingress_num_cpus", "ingress_resources")
        if getattr(s, k) != getattr(default, k)
    ]
    if unused:
        log.warning(
            "serve.%s place the CPU ingress of serve.topology=composed and are unused with "
            "serve.topology=single, whose ingress holds the model: its replicas and resources "
            "are serve.replicas and serve.replica_*",
            ", serve.".join(unused),
        )


def start(cfg: Config) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``serve.host:serve.port`` and deploy the app at ``/``.

    Ray must be initialised and the ModelActor running (``candleray serve`` does both).
    Replicas no node can hold are a ``PlacementError`` first: ``serve.run`` would wait for
    them forever, its warnings only in Serve's log.
    """
    check_security(cfg.serve)
    s = cfg.serve
    if s.topology == "single":
        check_cluster(replica_request(s))
    else:
        check_cluster(replica_request(s), ingress_request(s))
    serve.start(http_options=http_options(s))
    handle = serve.run(build_app(cfg), name=cfg.run.name, route_prefix="/")
    log.info("candleray app at http://%s:%d/ (serve.topology=%s)", s.host, s.port, s.topology)
    return handle
