"""A real multi-node Ray cluster on this machine, for the node-loss tests (one per test session).

``ray.cluster_utils.Cluster`` starts a head with no CPUs and worker nodes ``node_a``,
``node_b``, ``node_c``, each with a custom resource of its own name (so a test can pin work to
a node) and a local directory of its own, deleted when the test kills that node: a file that
only lived on a dead node's disk is lost, as on a real cluster.

This pytest process stays connected to the suite's local cluster (``ray_cluster``; a process
joins one Ray cluster only), so the multi-node cluster is built without connecting, and each
scenario runs from a subprocess driver (``candleray ... ray.address=<its address>``); the test
kills nodes from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import free_port

NODES = ("node_a", "node_b", "node_c")
NODE_CPUS = 2  # logical CPUs per worker node
# session hosts may run on these two only (live.host_resources={host_slot: 0.01}): a test kills
# the one holding a host and sees it restart on the other (test_session_host_node_loss.py)
HOST_SLOT = {"node_a": {"host_slot": 1}, "node_b": {"host_slot": 1}}
# one unit of each on every node: a deployment whose replicas each ask a whole unit gets at most
# one replica per node (tests/cluster/test_serve_node_loss.py spreads Serve this way)
SLOTS = {"replica_slot": 1, "ingress_slot": 1}


@dataclass
class MultiNode:
    """The running cluster: ``address`` for ``ray.address``, ``dashboard`` for the state API."""

    cluster: Any  # ray.cluster_utils.Cluster
    address: str
    dashboard: str
    root: Path
    env: dict[str, str]
    nodes: dict[str, Any] = field(default_factory=dict)  # name → ray._private.node.Node

    def node_dir(self, name: str) -> Path:
        """The node's own local disk; gone with the node."""
        return self.root / name

    def node_id(self, name: str) -> str:
        return str(self.nodes[name].node_id)

    def add(self, name: str) -> None:
        """Start node ``name`` (again, after a kill: a fresh node, an empty disk)."""
        self.node_dir(name).mkdir(parents=True)
        self.nodes[name] = self.cluster.add_node(
            num_cpus=NODE_CPUS,
            resources={name: 1, **SLOTS, **HOST_SLOT.get(name, {})},
            temp_dir=str(self.root / "ray"),
            env_vars={**self.env, "CANDLERAY_TEST_NODE": name},
        )

    def kill(self, name: str) -> None:
        """The node dies at once (no graceful shutdown), and its local disk with it."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)
        shutil.rmtree(self.node_dir(name))

    def alive(self) -> list[str]:
        return list(self.nodes)

    def ensure_all(self) -> None:
        """Every node of ``NODES`` up: a test that needs them starts again those killed before."""
        for name in NODES:
            if name not in self.nodes:
                self.add(name)
        self.cluster.wait_for_nodes(timeout=120)


@pytest.fixture(scope="session")
def multi_node(ray_cluster, s3_bucket) -> Iterator[MultiNode]:
    from ray.cluster_utils import Cluster

    # short: Ray's unix sockets live under it (a path limit of ~107 bytes)
    root = Path(tempfile.mkdtemp(prefix="crmn", dir="/tmp"))
    (root / "ray").mkdir()
    saved = os.environ.get("RAY_TMPDIR")
    # Cluster writes its address to <RAY_TMPDIR>/ray/ray_current_cluster, which a plain
    # ray.init() on this machine joins: pointed here, no other test or CI run on this machine
    # ends up on this cluster by accident
    os.environ["RAY_TMPDIR"] = str(root)
    dashboard_port = free_port()
    try:
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 0,  # the head only runs drivers: all work goes to the nodes
                "temp_dir": str(root / "ray"),
                "include_dashboard": True,  # the state API: which node ran which task attempt
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port,
                "dashboard_agent_listen_port": free_port(),
                # a killed node is declared dead within ~10 s (default ~30 s); not lower: a
                # loaded 2-core machine must not miss a live node's heartbeats
                "_system_config": {
                    "health_check_period_ms": 1000,
                    "health_check_failure_threshold": 10,
                },
            },
        )
        # the workers of every node get the S3 store's endpoint and keys (set before they start)
        mn = MultiNode(
            cluster, cluster.address, f"http://127.0.0.1:{dashboard_port}", root, s3_bucket.env
        )
        try:
            for name in NODES:
                mn.add(name)
            cluster.wait_for_nodes()
        except BaseException:
            _stop(mn)
            raise
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
    try:
        yield mn
    finally:
        _stop(mn)


def _stop(mn: MultiNode) -> None:
    # node by node, not Cluster.shutdown(): that also resets this process's internal KV (the
    # local cluster's) and deletes the machine-wide /tmp/ray address file
    for node in list(mn.cluster.worker_nodes):
        mn.cluster.remove_node(node, allow_graceful=False)
    if mn.cluster.head_node is not None:
        mn.cluster.remove_node(mn.cluster.head_node, allow_graceful=False)
    shutil.rmtree(mn.root, ignore_errors=True)
