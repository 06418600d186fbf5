"""Placement: what each actor and task asks Ray for, checked before it is created.

Ray queues an actor or task whose resources it cannot find, warns in its own logs and waits,
forever: a typo in a custom resource name, or a GPU asked of a CPU cluster, looked like a
hang. Every request is built here from its config keys (``Request``), so its Ray options and
its error messages come from one place, and is checked at one of two depths:

* ``check_fits``: a request no alive node can meet (a resource none has, more of it than any
  one node has, or no node with all of them at once) is a ``PlacementError`` at once, naming
  the config key, the resource and what the nodes offer;
* ``reserve``: the same, then a placement group of the same shape (a probe, removed again)
  must be placed within ``ray.placement_timeout_s``; past it, the resource is busy (other
  actors or tasks hold it) and the error names the key, the resource and what is free.

The ModelActor and the session hosts get ``reserve`` (an actor waits for its resources
unseen); backtest tasks and Serve replicas get ``check_fits`` only: tasks queue by design
(more symbols than CPUs is normal) and Serve schedules and reports its own replicas. The
probe waits for the resources, not for the actor's constructor, so a slow ``__init__``
(a checkpoint loaded from S3) is never mistaken for a missing resource.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import PlacementError

log = logging.getLogger(__name__)

# Ray's own resources that name no capacity a request can ask for (per-node markers, memory)
_NOT_OFFERED = ("node:", "memory", "object_store_memory", "accelerator_type:")
_EPS = 1e-9  # Ray counts resources in units of 1e-4; this only absorbs float rounding


@dataclass(frozen=True)
class Request:
    """What one actor or task asks for, and the config key behind each amount.

    ``what`` names it in errors ("the ModelActor 'm'"); custom resources come from
    ``resources`` (set by ``resources_key``), CPUs and GPUs from their own keys.
    """

    what: str
    num_cpus: float
    cpus_key: str
    resources: Mapping[str, float] = field(default_factory=dict)
    resources_key: str = ""
    num_gpus: float = 0.0
    gpus_key: str | None = None

    def amounts(self) -> dict[str, float]:
        """Every resource asked for, by Ray's name (CPU, GPU, custom); zeros left out."""
        out = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {name: float(amount) for name, amount in out.items() if amount > 0}

    def key_of(self, resource: str) -> str:
        if resource == "CPU":
            return self.cpus_key
        if resource == "GPU" and self.gpus_key:
            return self.gpus_key
        return self.resources_key

    def options(self) -> dict[str, Any]:
        """``.options(...)`` / ``ray_actor_options`` for Ray: num_cpus always (an actor left
        without it is scheduled on 1 CPU), num_gpus when a key sets it, custom resources when
        there are any."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.gpus_key is not None:
            opts["num_gpus"] = self.num_gpus
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


def offered(nodes: Sequence[Mapping[str, float]]) -> str:
    """What the nodes offer in all, e.g. ``CPU 4, GPU 1, gpu_node 1 (2 nodes)``."""
    total: dict[str, float] = {}
    for node in nodes:
        for name, amount in node.items():
            if not name.startswith(_NOT_OFFERED):
                total[name] = total.get(name, 0.0) + amount
    if not nodes:
        return "nothing (no node is alive)"
    parts = ", ".join(f"{name} {amount:g}" for name, amount in sorted(total.items()))
    return f"{parts or 'no resources'} ({len(nodes)} node{'s' * (len(nodes) != 1)})"


def _fix(req: Request, resource: str) -> str:
    key = req.key_of(resource)
    if resource in ("CPU", "GPU"):
        return f"lower {key}, or add a node with more {resource}s"
    return (
        f"start a node that has it (ray start ... --resources='{{\"{resource}\": 1}}'), "
        f"or change {key}"
    )


def check_fits(req: Request, nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise ``PlacementError`` unless one of ``nodes`` (each node's resource totals) could
    hold ``req``: the key, the resource and what the nodes offer are named."""
    amounts = req.amounts()
    if not amounts:
        return
    for resource, amount in amounts.items():
        most = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if most <= 0:
            raise PlacementError(
                f"{req.what} asks for {resource}={amount:g} ({req.key_of(resource)}), but no "
                f"node of the cluster has {resource}; the nodes offer {offered(nodes)}. "
                f"{_fix(req, resource).capitalize()}"
            )
        if amount > most + _EPS:
            raise PlacementError(
                f"{req.what} asks for {resource}={amount:g} ({req.key_of(resource)}), more than "
                f"any node has (at most {most:g}); the nodes offer {offered(nodes)}. "
                f"{_fix(req, resource).capitalize()}"
            )
    if not any(all(n.get(r, 0.0) + _EPS >= a for r, a in amounts.items()) for n in nodes):
        keys = sorted({req.key_of(r) for r in amounts})
        raise PlacementError(
            f"{req.what} asks for {_fmt(amounts)} on one node ({', '.join(keys)}), but no node "
            f"has all of them; the nodes: {'; '.join(_fmt(_shown(n)) for n in nodes)}. Give one "
            "node every resource the request names, or change those keys"
        )


def _fmt(amounts: Mapping[str, float]) -> str:
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(amounts.items())) or "none"


def _shown(node: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in node.items() if not k.startswith(_NOT_OFFERED)}


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's resource totals (Ray must be initialised)."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def exists(name: str, namespace: str) -> bool:
    """Whether a named actor is alive or restarting (it holds, or will hold, its resources)."""
    import ray

    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


def check_cluster(*reqs: Request) -> None:
    """``check_fits`` of each request against the running cluster."""
    nodes = alive_nodes()
    for req in reqs:
        check_fits(req, nodes)


def reserve(req: Request, count: int, timeout_s: float, timeout_key: str) -> None:
    """Return once ``count`` copies of ``req`` could be placed now; ``PlacementError`` at once
    when they never can (``check_fits``), or after ``timeout_s`` (``timeout_key``) when the
    resources exist but stay held by others. Nothing is left reserved either way."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    check_cluster(req)
    amounts = req.amounts()
    if count < 1 or not amounts:
        return  # nothing to wait for: Ray places an actor that asks for nothing at once
    # PACK: as few nodes as possible, several if need be, the way Ray would place the actors
    probe = placement_group([amounts] * count, strategy="PACK")
    try:
        ready, _ = ray.wait([probe.ready()], timeout=timeout_s)
    finally:
        remove_placement_group(probe)
    if ready:
        return
    free = ray.available_resources()
    short = [r for r, a in amounts.items() if free.get(r, 0.0) + _EPS < a * count]
    held = ", ".join(
        f"{r} ({req.key_of(r)}): {a * count:g} wanted, {free.get(r, 0.0):g} free of {_total(r):g}"
        for r, a in amounts.items()
        if r in short
    )
    detail = (
        f"busy: {held} (other actors or tasks hold the rest)"
        if short
        else f"the free resources lie on different nodes (free now: {_fmt(_shown(free))})"
    )
    copies = f"{count} × " if count > 1 else ""
    raise PlacementError(
        f"{req.what} could not be placed within {timeout_s:g}s ({timeout_key}): it asks for "
        f"{copies}{_fmt(amounts)} and the cluster has it, but {detail}. Free them (ray status "
        f"shows who holds what), lower the request, or raise {timeout_key}"
    )


def _total(resource: str) -> float:
    import ray

    return float(ray.cluster_resources().get(resource, 0.0))
