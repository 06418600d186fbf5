"""Placement settings: the resource keys are typed and checked at load, every actor, replica
and task takes its Ray options from them, and a request no node can meet is named (no Ray)."""

from __future__ import annotations

import pytest

from actors.hosts.host import host_request
from actors.model.actor import model_request
from pipelines.backtest.runner import task_request
from pipelines.config import load_config
from pipelines.errors import ConfigError, PlacementError
from pipelines.placement import Request, check_fits
from serve.config import deployment_options, ingress_options

KEYS = (
    "ray.actor_resources",
    "live.host_resources",
    "serve.replica_resources",
    "serve.ingress_resources",
    "backtest.task_resources",
)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{gpu_node: lots}", r"\.gpu_node: expected a number, got str"),
        ("{gpu_node: -1}", r"\.gpu_node=-1.0 must be a finite amount >= 0.0001"),
        ("{gpu_node: 0}", r"\.gpu_node=0.0 must be a finite amount"),
        ("{gpu_node: .nan}", r"\.gpu_node=nan must be a finite amount"),
        ("{gpu_node: true}", r"\.gpu_node: expected a number, got bool"),
        ("{1: 0.5}", r" key 1: expected a string, got int"),
        ("{CPU: 1}", r": CPU is not a custom resource, Ray reserves the name; CPUs are "),
        ("[gpu_node]", r": expected a mapping, got list"),
    ],
)
def test_a_bad_resource_mapping_fails_at_load_naming_the_key(value, needle):
    with pytest.raises(ConfigError, match=r"ray\.actor_resources" + needle):
        load_config(None, [f"ray.actor_resources={value}"])


@pytest.mark.parametrize("key", KEYS)
def test_every_resource_key_is_checked(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r"\.gpu_node=-1.0 must be"):
        load_config(None, [f"{key}={{gpu_node: -1}}"])


def test_cpu_and_gpu_in_a_mapping_point_at_their_own_keys():
    with pytest.raises(ConfigError, match="GPUs ray.actor_num_gpus"):
        load_config(None, ["ray.actor_resources={GPU: 1}"])
    with pytest.raises(ConfigError, match="CPUs are backtest.task_num_cpus"):
        load_config(None, ["backtest.task_resources={CPU: 1}"])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("ray.placement_timeout_s=0", "ray.placement_timeout_s=0.0 must be > 0"),
        ("live.host_num_cpus=-0.5", "live.host_num_cpus must be >= 0"),
        ("ray.address=http://head:8265", "an http:// address is the dashboard's"),
    ],
)
def test_other_cluster_settings_are_checked_at_load(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_every_actor_replica_and_task_takes_its_resources_from_its_keys():
    cfg = load_config(
        None,
        [
            "ray.actor_num_cpus=1",
            "ray.actor_num_gpus=0.5",
            "ray.actor_resources={gpu_node: 0.01}",
            "live.host_num_cpus=0.2",
            "live.host_resources={cpu_node: 0.01}",
            "serve.replica_num_gpus=0.25",
            "serve.replica_resources={gpu_node: 0.5}",
            "serve.ingress_resources={edge: 1}",
            "backtest.task_resources={cpu_node: 0.25, big_disk: 1}",
        ],
        resolve_paths=False,
    )
    assert model_request(cfg).options() == {
        "num_cpus": 1.0,
        "num_gpus": 0.5,
        "resources": {"gpu_node": 0.01},
    }
    assert host_request(cfg).options() == {"num_cpus": 0.2, "resources": {"cpu_node": 0.01}}
    assert task_request(cfg).options() == {
        "num_cpus": 0.5,
        "resources": {"cpu_node": 0.25, "big_disk": 1.0},
    }
    assert deployment_options(cfg.serve)["ray_actor_options"] == {
        "num_cpus": 0.25,
        "num_gpus": 0.25,
        "resources": {"gpu_node": 0.5},
    }
    assert ingress_options(cfg.serve)["ray_actor_options"] == {
        "num_cpus": 0.1,
        "resources": {"edge": 1.0},
    }


ACTOR = Request(
    "the ModelActor 'm'",
    0.5,
    "ray.actor_num_cpus",
    {"gpu_node": 0.01},
    "ray.actor_resources",
    num_gpus=1.0,
    gpus_key="ray.actor_num_gpus",
)
CPU_NODE = {"CPU": 8.0, "memory": 1e9, "node:10.0.0.1": 1.0}
GPU_NODE = {"CPU": 4.0, "GPU": 2.0, "gpu_node": 1.0, "node:10.0.0.2": 1.0}


def test_a_request_a_node_can_hold_passes():
    check_fits(ACTOR, [CPU_NODE, GPU_NODE])


def test_a_resource_no_node_has_is_named_with_its_key_and_what_is_offered():
    with pytest.raises(PlacementError) as err:
        check_fits(ACTOR, [CPU_NODE])
    text = str(err.value)
    assert "the ModelActor 'm' asks for GPU=1 (ray.actor_num_gpus)" in text
    assert "no node of the cluster has GPU" in text
    assert "the nodes offer CPU 8 (1 node)" in text  # Ray's node: and memory entries left out
    nogpu = Request(
        "the ModelActor 'm'", 0.5, "ray.actor_num_cpus", {"gpu_nod": 0.01}, "ray.actor_resources"
    )
    with pytest.raises(PlacementError, match=r"gpu_nod=0.01 \(ray.actor_resources\), but no node"):
        check_fits(nogpu, [CPU_NODE, GPU_NODE])


def test_more_than_any_node_has_or_no_node_with_all_of_it_is_named():
    big = Request(
        "a session host", 6.0, "live.host_num_cpus", {"gpu_node": 0.5}, "live.host_resources"
    )
    with pytest.raises(PlacementError) as err:
        check_fits(big, [CPU_NODE, GPU_NODE])
    # 8 CPUs on one node, gpu_node on another: each exists, never on one node
    assert "no node has all of them" in str(err.value)
    assert "live.host_num_cpus, live.host_resources" in str(err.value)
    huge = Request("a backtest task", 16.0, "backtest.task_num_cpus")
    with pytest.raises(
        PlacementError,
        match=r"CPU=16 \(backtest.task_num_cpus\), more than any node has \(at most 8\)",
    ):
        check_fits(huge, [CPU_NODE, GPU_NODE])
