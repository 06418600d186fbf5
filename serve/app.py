"""The Serve application: a FastAPI ingress composed with the batched predictor by ``.bind()``.

    app = build_app(cfg)                     # Ingress.bind(BatchedPredictor.bind(cfg), cfg)
    handle = start(cfg)                      # Serve HTTP on serve.host:serve.port, app at "/"

The ingress builds its FastAPI app at replica start (``__serve_build_asgi_app__``) from the
plain ``serve.api.build_api`` over a ``serve.backend.RayBackend``, so the routes are the same
code the tests drive. The ModelActor, the session hosts and the JobBoard are found by name.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from conf import Config
from pipelines.placement import check_cluster
from serve.api import build_api
from serve.backend import RayBackend
from serve.config import http_options, ingress_options, ingress_request, replica_request
from serve.predictor_app import build_predictor_app
from serve.security import check_security

log = logging.getLogger(__name__)


# replicas and CPUs come from serve.ingress_* in build_app; these are only the defaults
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(self, predictor: DeploymentHandle, cfg: Config) -> None:
        check_security(cfg.serve)
        self.cfg = cfg
        self.backend = RayBackend(cfg, predictor)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.backend, self.cfg.serve)


def build_app(cfg: Config) -> Application:
    """The whole app, bound: the ingress with the predictor deployment as its argument."""
    check_security(cfg.serve)
    # @serve.deployment turns the class into a Deployment; mypy keeps a decorated class's type
    ingress = Ingress.options(**ingress_options(cfg.serve))  # type: ignore[attr-defined]
    return ingress.bind(build_predictor_app(cfg), cfg)


def start(cfg: Config) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``serve.host:serve.port`` and deploy the app at ``/``.

    Ray must be initialised and the ModelActor running (``candleray serve`` does both).
    Replicas no node can hold are a ``PlacementError`` first: ``serve.run`` would wait for
    them forever, its warnings only in Serve's log.
    """
    check_security(cfg.serve)
    check_cluster(replica_request(cfg.serve), ingress_request(cfg.serve))
    serve.start(http_options=http_options(cfg.serve))
    handle = serve.run(build_app(cfg), name=cfg.run.name, route_prefix="/")
    log.info("candleray app at http://%s:%d/", cfg.serve.host, cfg.serve.port)
    return handle
