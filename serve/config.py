"""The model replicas' settings: Serve options from ``serve.*`` and live batching knobs.

The replicas that hold the model are the predictor deployment (``serve.topology=composed``)
or the HTTP ingress itself (``single``); ``serve.replicas``/``replica_*``/batching mean the
same in both.

Batching (``max_batch_size``, ``batch_wait_timeout_s``) travels as the deployment's
``user_config``, so ``reconfigure()`` can change it on running replicas. A bad value is
refused with ``ConfigError`` and nothing changes; there is no fallback to a default.
Check before deploying too (``parse_batching``): Serve turns a ``reconfigure()`` that
raises into a failed deployment, so a bad value must never reach it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conf import ServeConfig
from conf.validate import check_serve
from pipelines.errors import ConfigError
from pipelines.placement import Request

KNOBS: tuple[str, ...] = ("max_batch_size", "batch_wait_timeout_s")


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    batch_wait_timeout_s: float

    @classmethod
    def of(cls, s: ServeConfig) -> Batching:
        return cls(s.max_batch_size, s.batch_wait_timeout_s)

    def user_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _number(key: str, value: Any, kind: type) -> Any:
    # bool is an int in Python; "max_batch_size: true" is a mistake, not 1
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        want = "an integer" if kind is int else "a number of seconds"
        raise ConfigError(
            f"batching {key}={value!r} ({type(value).__name__}) must be {want}; "
            "no batching setting was changed"
        )
    return kind(value)


def parse_batching(user_config: Any, serve_cfg: ServeConfig) -> Batching:
    """``user_config`` (a mapping with some of ``KNOBS``) → Batching; ConfigError when bad.

    Keys left out take the ``serve`` section's values; limits are ``check_serve``'s, the
    same rule the config file is held to (``max_ongoing_requests`` stays the deployment's).
    """
    if not isinstance(user_config, Mapping):
        raise ConfigError(
            f"batching user_config must be a mapping with keys {list(KNOBS)}, "
            f"got {type(user_config).__name__}"
        )
    unknown = sorted(set(user_config) - set(KNOBS))
    if unknown:
        raise ConfigError(
            f"batching user_config has unknown key(s) {unknown}; allowed: {list(KNOBS)}. "
            "Replicas, CPUs and GPUs change by redeploying with new serve.* config"
        )
    knobs: dict[str, Any] = {}
    if "max_batch_size" in user_config:
        knobs["max_batch_size"] = _number("max_batch_size", user_config["max_batch_size"], int)
    if "batch_wait_timeout_s" in user_config:
        knobs["batch_wait_timeout_s"] = _number(
            "batch_wait_timeout_s", user_config["batch_wait_timeout_s"], float
        )
    merged = dataclasses.replace(serve_cfg, **knobs)
    check_serve(merged)
    return Batching.of(merged)


def replica_request(s: ServeConfig) -> Request:
    """What one predictor replica asks Ray for (``serve.replica_*``)."""
    return Request(
        "a predictor replica",
        s.replica_num_cpus,
        "serve.replica_num_cpus",
        s.replica_resources,
        "serve.replica_resources",
        num_gpus=s.replica_num_gpus,
        gpus_key="serve.replica_num_gpus",
    )


def ingress_request(s: ServeConfig) -> Request:
    """What one HTTP ingress replica asks Ray for (``serve.ingress_*``)."""
    return Request(
        "an ingress replica",
        s.ingress_num_cpus,
        "serve.ingress_num_cpus",
        s.ingress_resources,
        "serve.ingress_resources",
    )


def ingress_options(s: ServeConfig) -> dict[str, Any]:
    """``Deployment.options(...)`` for the HTTP ingress: replicas and resources from ``serve.*``."""
    check_serve(s)
    return {
        "num_replicas": s.ingress_replicas,
        "ray_actor_options": ingress_request(s).options(),
    }


def deployment_options(s: ServeConfig) -> dict[str, Any]:
    """``Deployment.options(...)`` for the predictor: replicas, resources and batching."""
    check_serve(s)
    return {
        "num_replicas": s.replicas,
        "max_ongoing_requests": s.max_ongoing_requests,
        "ray_actor_options": replica_request(s).options(),
        "user_config": Batching.of(s).user_config(),
    }


def model_ingress_options(s: ServeConfig) -> dict[str, Any]:
    """``Deployment.options(...)`` for serve.topology=single, whose HTTP ingress holds the
    model: the predictor's settings (``deployment_options``), as it serves ``/predict``."""
    return deployment_options(s)


def http_options(s: ServeConfig) -> dict[str, Any]:
    """``serve.start(http_options=...)`` for Serve's HTTP proxy: the bind address and the
    timeouts that end held-open connections (idle keep-alive, a whole request)."""
    check_serve(s)
    return {
        "host": s.host,
        "port": s.port,
        "keep_alive_timeout_s": s.keep_alive_timeout_s,
        "request_timeout_s": s.request_timeout_s,
    }
