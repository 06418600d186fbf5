"""A real network: two Ray nodes in network namespaces of their own (a head, a worker), each
with its own address and temp folder, Ray token authentication on, and ``candleray train``
run from a third namespace against ``ray.address=<head-ip>:6379``; a driver without the token
is refused. Nothing here can reach 127.0.0.1 of another namespace, so a part that assumed one
machine (loopback, a shared temp folder, a local S3) would fail.

The namespaces hang on a bridge in this machine's own namespace, whose address is the S3
store's there (a second moto server on the bridge address, sharing the session store's
buckets and keys). Every name and the subnet are this run's own; the namespaces and every
process in them are gone after the test, whatever happened (``ip netns pids``, never
``ray stop``: that stops every Ray process of the machine, other clusters' too).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import Output, free_port, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent  # ray and candleray of this venv
GCS_PORT = 6379  # each namespace has its own ports: Ray's defaults clash with nothing


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Net:
    """Namespaces ``<prefix>h`` (head), ``<prefix>w`` (worker), ``<prefix>d`` (driver) at
    ``<subnet>.1``-``.3``, on a bridge at ``<subnet>.254``."""

    prefix: str
    subnet: str
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}b"

    def addr(self, role: str) -> str:
        return f"{self.subnet}.{'hwd'.index(role) + 1}" if role in "hwd" else f"{self.subnet}.254"

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def run(self, role: str, args: list[str], env: dict[str, str], **kw):
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *args],
            env=env,
            capture_output=True,
            text=True,
            **kw,
        )


def free_subnet() -> str:
    """A 10.77.X subnet no interface of this machine uses (another run's bridge, say)."""
    used = ip("-o", "-4", "addr").stdout
    choices = list(range(1, 254))
    random.shuffle(choices)
    for x in choices:
        if f" 10.77.{x}." not in used:
            return f"10.77.{x}"
    pytest.fail("no free 10.77.X.0/24 subnet")


def build(net: Net) -> None:
    ip("link", "add", net.bridge, "type", "bridge")
    ip("addr", "add", f"{net.addr('b')}/24", "dev", net.bridge)
    ip("link", "set", net.bridge, "up")
    for role in "hwd":
        ns, outer, inner = net.ns(role), f"{net.prefix}{role}o", f"{net.prefix}{role}i"
        ip("netns", "add", ns)
        net.namespaces.append(ns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("link", "set", outer, "master", net.bridge, "up")
        ip("-n", ns, "addr", "add", f"{net.addr(role)}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")


def pids(ns: str) -> list[int]:
    got = ip("netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in got if p.isdigit()]


def teardown(net: Net) -> None:
    """Every process in the namespaces killed, then the namespaces and the bridge deleted."""
    for ns in net.namespaces:
        deadline = time.monotonic() + 60  # a hang guard
        sig = signal.SIGTERM
        while (left := pids(ns)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(1)
            sig = signal.SIGKILL  # Ray's processes had their chance
        ip("netns", "del", ns, check=False)
    ip("link", "del", net.bridge, check=False)  # the veths' outer ends went with the namespaces


@pytest.fixture
def net() -> Iterator[Net]:
    if shutil.which("ip") is None:
        pytest.skip("network namespaces: the `ip` command (iproute2) is not installed")
    net = Net(prefix=f"cr{uuid.uuid4().hex[:6]}", subnet=free_subnet())
    probe = ip("netns", "add", net.ns("h"), check=False)
    if probe.returncode != 0:
        pytest.skip(
            f"network namespaces cannot be made here (`ip netns add`: {probe.stderr.strip()}); "
            "this test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        )
    ip("netns", "del", net.ns("h"))
    try:
        build(net)
        yield net
    finally:
        teardown(net)


@pytest.fixture
def bridge_s3(net, s3_bucket) -> Iterator[str]:
    """The session's S3 store also on the bridge address: one moto process, one set of
    buckets and keys, reachable from the namespaces."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=net.addr("b"), port=port, verbose=False)
    server.start()
    try:
        yield f"http://{net.addr('b')}:{port}"
    finally:
        server.stop()


# Each node runs in a PID and mount namespace of its own too, /tmp a tmpfs of its own: a driver
# finds its node's raylet by scanning processes and talks to it over unix sockets in the temp
# folder, so with a shared process table or /tmp a driver could use the head's raylet, which
# no machine of a real cluster can. The driver's machine is a node itself (0 CPUs): Ray's
# drivers need a raylet where they run (or Ray Client).
PRIVATE = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "sh", "-c"]
# the checkout (and its venv) stay visible when they live under /tmp, as a CI clone may: bound
# aside before the private /tmp hides them, bound back, and the aside mount dropped
REPO = Path(__file__).resolve().parents[2]
KEEP = f"{REPO}" if REPO.is_relative_to("/tmp") else ""
SETUP = (
    f'KEEP="{KEEP}"\n'
    'if [ -n "$KEEP" ]; then mkdir -p /run/crhost && mount --bind /tmp /run/crhost || exit 90; fi\n'
    "mount -t tmpfs tmpfs /tmp || exit 90\n"
    'if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && mount --bind "/run/crhost${KEEP#/tmp}" "$KEEP" '
    "&& umount -l /run/crhost || exit 90; fi\n"
    'mkdir -p "$HOME" || exit 90\n'
)

DRIVER = (
    SETUP
    + """ray start --address="$HEAD" --node-ip-address="$SELF" --num-cpus=0 \
    --temp-dir=/tmp/ray --disable-usage-stats > /tmp/start.log 2>&1 || {
  cat /tmp/start.log; exit 91; }
echo "--- without the token"
env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=disabled candleray train "$@" 2>&1
echo "--- refused rc=$?"
candleray train "$@" 2>&1
echo "--- trained rc=$?"
"""
)


def start_node(net: Net, role: str, args: list[str], env: dict[str, str]) -> None:
    """``ray start --block`` in the namespace; returns once the node is up."""
    script = SETUP + 'exec ray start "$@" --block'
    cmd = [
        "ip", "netns", "exec", net.ns(role), *PRIVATE, script, "sh", *args,
        f"--node-ip-address={net.addr(role)}", "--temp-dir=/tmp/ray", "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = Output(proc)
    deadline = time.monotonic() + 240  # a hang guard
    while "Ray runtime started" not in out.text:
        try:
            line = out.next_line(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"ray start in {net.ns(role)} hung:\n{out.text}")
        if line is None:
            pytest.fail(f"ray start in {net.ns(role)} exited ({proc.wait()}):\n{out.text}")


def test_train_across_network_namespaces_with_token_auth(net, bridge_s3, s3_bucket):
    import fsspec

    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "HOME": "/tmp/home",  # on the node's own /tmp: no ~/.ray/auth_token of this machine
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            **{k: v for k, v in s3_bucket.env.items() if k.startswith("AWS_")},
            "AWS_ENDPOINT_URL": bridge_s3,
            "MLFLOW_S3_ENDPOINT_URL": bridge_s3,
        }
    )
    head = f"{net.addr('h')}:{GCS_PORT}"
    name = f"ns{uuid.uuid4().hex[:8]}"
    # no CPUs on the head: the ModelActor can only run on the worker, across the network
    start_node(net, "h", ["--head", f"--port={GCS_PORT}", "--num-cpus=0", "--include-dashboard=false"], env)  # fmt: skip
    start_node(net, "w", [f"--address={head}", "--num-cpus=2"], env)
    overrides = [
        *tiny_overrides("/tmp/run", name),  # the driver's own /tmp
        "model.device=cpu",
        "data.synthetic.length=400",  # ~20 training steps
        "train.epochs=1",
        "train.batches_per_call=4",
        "ray.call_timeout_s=300",  # a loaded CI machine runs three Ray nodes here
        f"checkpoint.uri={s3_bucket.url}/{name}",
        f"ray.address={head}",
    ]
    driver = net.run(
        "d",
        [*PRIVATE, DRIVER, "sh", *overrides],
        {**env, "HEAD": head, "SELF": net.addr("d")},
        timeout=900,  # a hang guard
    )
    text = driver.stdout + driver.stderr
    refused, _, trained = text.partition("--- refused rc=")
    assert "--- without the token" in refused, text[-3000:]
    assert not trained.startswith("0"), refused[-3000:]  # the refused driver failed
    assert f"ray.address={head!r}: the cluster has Ray's token authentication on" in refused
    assert "RAY_AUTH_TOKEN" in refused  # the fix
    assert "--- trained rc=0" in trained, trained[-4000:]
    # read back from this machine's side of the store (the session's 127.0.0.1 endpoint)
    fs, root = fsspec.core.url_to_fs(f"{s3_bucket.url}/{name}")
    written = sorted(p for p in fs.find(root) if "step" in p)
    assert written, f"no checkpoint under {s3_bucket.url}/{name}: {fs.find(root)}"
    print(
        f"trained from {net.ns('d')} ({net.addr('d')}) through head {head} on worker "
        f"{net.addr('w')}, token auth on; checkpoints on S3: {written}"
    )
