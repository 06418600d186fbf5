"""Connect to Ray once, at the entry point: a local cluster by default, or ``ray.address``."""

from __future__ import annotations

import logging

import ray

from conf import Config

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> bool:
    """Connect; True if this call started/joined Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict = {
        "namespace": cfg.ray.namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    else:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    ray.init(**kwargs)
    return True
