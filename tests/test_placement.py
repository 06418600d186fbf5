"""Placement on the shared one-node cluster (CPU 4, test_slot 1): a request no node can meet
fails at once naming its key, a busy one fails by ``ray.placement_timeout_s`` naming the
resource, and actors and tasks hold what they asked for."""

from __future__ import annotations

import time

import pytest
import ray

from actors import ModelClient, start_hosts, stop_hosts
from actors.hosts.host import host_name
from pipelines.backtest.runner import run_backtests, task_request
from pipelines.errors import PlacementError
from pipelines.placement import check_cluster
from serve.config import replica_request

pytestmark = pytest.mark.ray


def free_slot() -> float:
    return ray.available_resources().get("test_slot", 0.0)


def wait_for(pred, what: str, timeout_s: float = 120.0) -> None:
    """A hang guard, not a deadline: Ray's resource view follows its nodes within moments."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def gone(cfg, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=cfg.ray.namespace)
    except ValueError:
        return True
    return False


def test_a_resource_no_node_has_fails_at_once_naming_its_key(ray_cluster, make_cfg):
    # a long deadline: were the missing resource waited for, this test would hang for it
    cfg = make_cfg(
        "ray.actor_resources={gpu_node: 0.01}",
        "live.host_resources={gpu_node: 0.01}",
        "serve.replica_resources={gpu_node: 1}",
        "backtest.task_resources={gpu_node: 0.5}",
        "ray.placement_timeout_s=600",
    )
    with pytest.raises(PlacementError) as err:
        ModelClient.connect(cfg)
    text = str(err.value)
    assert f"the ModelActor {cfg.run.name!r} asks for gpu_node=0.01 (ray.actor_resources)" in text
    assert "no node of the cluster has gpu_node" in text and "test_slot 1" in text  # offered
    assert gone(cfg, cfg.run.name)  # nothing created, nothing left waiting
    with pytest.raises(PlacementError, match=r"gpu_node=0.01 \(live.host_resources\)"):
        start_hosts(cfg)
    assert gone(cfg, host_name(cfg, 0))
    with pytest.raises(PlacementError, match=r"gpu_node=0.5 \(backtest.task_resources\)"):
        run_backtests([], None, cfg)  # type: ignore[arg-type]  # checked before any task
    with pytest.raises(PlacementError, match=r"gpu_node=1 \(serve.replica_resources\)"):
        check_cluster(replica_request(cfg.serve))  # what candleray serve checks before serve.run
    gpu = make_cfg("ray.actor_num_gpus=1")
    with pytest.raises(PlacementError, match=r"GPU=1 \(ray.actor_num_gpus\), but no node"):
        ModelClient.connect(gpu)


def test_backtest_tasks_hold_their_resources(ray_cluster, make_cfg):
    cfg = make_cfg("backtest.task_resources={test_slot: 0.5}")

    def assigned() -> dict[str, float]:  # local: pickled by value
        return ray.get_runtime_context().get_assigned_resources()

    # the options run_backtests gives its tasks
    task = ray.remote(assigned).options(**task_request(cfg).options())
    assert ray.get(task.remote(), timeout=120) == {"CPU": 0.5, "test_slot": 0.5}


@pytest.mark.slow
def test_a_busy_resource_fails_by_the_deadline_and_actors_hold_what_they_ask(ray_cluster, make_cfg):
    cfg = make_cfg(
        "ray.actor_resources={test_slot: 0.5}",
        "ray.placement_timeout_s=2",
        "live.hosts=1",
        "live.host_num_cpus=0.1",
        "live.host_resources={test_slot: 0.5}",
    )

    class Holder:  # local: pickled by value (the tests folder is no package on the workers)
        def ready(self) -> bool:
            return True

    blocker = ray.remote(num_cpus=0, resources={"test_slot": 1})(Holder).remote()
    try:
        ray.get(blocker.ready.remote(), timeout=120)
        with pytest.raises(PlacementError) as err:
            ModelClient.connect(cfg)
        text = str(err.value)
        assert "could not be placed within 2s (ray.placement_timeout_s)" in text
        assert "busy: test_slot (ray.actor_resources): 0.5 wanted, 0 free of 1" in text
        assert gone(cfg, cfg.run.name)  # not left queued behind the blocker
    finally:
        ray.kill(blocker)
    wait_for(lambda: free_slot() == 1.0, "the blocker's test_slot back")
    client = ModelClient.connect(cfg)
    hosts: list = []
    try:
        client.call("weights_version")  # up: the host finds it by name
        wait_for(lambda: free_slot() == 0.5, "the ModelActor to hold test_slot 0.5")
        hosts = start_hosts(cfg)
        ray.get(hosts[0].pid.remote(), timeout=120)
        wait_for(lambda: free_slot() == 0.0, "the session host to hold the other 0.5")
    finally:
        stop_hosts(hosts)
        ray.kill(client.handle, no_restart=True)
    wait_for(lambda: free_slot() == 1.0, "test_slot back from the ModelActor and the host")
