"""The replicas that hold the model, on a real Serve instance: two of them, deployed once per
topology (``serve.topology``): the predictor deployment of ``composed``, and the HTTP ingress
of ``single``, which holds the same batched model and is called here through its handle.

Serve starts once per topology (127.0.0.1, a free port) and the app is deployed once:
starting replicas costs seconds here, so every test shares them, and reconfiguration is
exercised on the running replicas.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import ray
from serve_harness import TOPOLOGIES
from support import free_port, tiny_overrides

from actors import ModelClient, spec_from_config
from conf import Config
from pipelines.config import load_config
from pipelines.errors import ConfigError, InvalidInputError
from serve.predictor import Predictor

pytestmark = [pytest.mark.ray]

REPLICAS = 2


@dataclass
class App:
    cfg: Config
    client: ModelClient
    handle: Any
    replicas: set[str]


def infos(handle: Any, n: int = REPLICAS, timeout_s: float = 20.0) -> dict[str, dict]:
    """``info()`` of every replica (calls land on a random replica: ask until all answered)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < n and time.monotonic() < deadline:
        for r in [handle.info.remote() for _ in range(4)]:
            i = r.result(timeout_s=10)
            seen[i["replica"]] = i
    assert len(seen) == n, f"only replicas {sorted(seen)} answered"
    return seen


def build(cfg: Config) -> Any:
    """The app whose replicas hold the model in ``cfg``'s topology."""
    from serve.app import build_app
    from serve.predictor_app import build_predictor_app

    return build_predictor_app(cfg) if cfg.serve.topology == "composed" else build_app(cfg)


@pytest.fixture(scope="module", params=TOPOLOGIES)
def app(request, ray_cluster, tmp_path_factory) -> Iterator[App]:
    from ray import serve

    home = tmp_path_factory.mktemp("serve")
    cfg = load_config(
        None,
        [
            *tiny_overrides(home, f"serve{uuid.uuid4().hex[:8]}"),
            f"serve.topology={request.param}",
            f"serve.replicas={REPLICAS}",
            "serve.replica_num_cpus=0.1",
            "serve.max_batch_size=8",
            "serve.batch_wait_timeout_s=0.05",
            "serve.max_request_bytes=100000",
        ],
    )
    client = ModelClient.connect(cfg)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        handle = serve.run(build(cfg), name="predictor-test", route_prefix=None)
        yield App(cfg, client, handle, set(infos(handle)))
    finally:
        serve.shutdown()
        ray.kill(client.handle, no_restart=True)


def windows(cfg: Config, b: int, seed: int = 0) -> np.ndarray:
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, spec.window, spec.n_features)).astype(np.float32)


def unbatched(app: App, x: np.ndarray) -> Any:
    """The same weights the actor publishes, predicted alone, outside Serve."""
    p = Predictor(spec_from_config(app.cfg), "cpu")
    snap = app.client.call("weights_snapshot")
    p.load(ray.get(snap["ref"]), snap["version"], snap["generation"])
    return p.predict(x)


def test_concurrent_requests_share_forward_passes_and_answer_as_unbatched(app):
    x = windows(app.cfg, 32)
    answers = [
        r.result(timeout_s=30)[0]
        for r in [app.handle.predict.remote(x[i : i + 1]) for i in range(32)]
    ]
    passes = {(a.replica, a.forward_pass) for a in answers}
    assert len(passes) <= 16, f"{len(passes)} forward passes for 32 requests"
    assert max(a.batch_windows for a in answers) > 1
    assert all(a.batch_windows <= 8 for a in answers)  # serve.max_batch_size from config
    alone = unbatched(app, x)
    assert {a.version for a in answers} == {alone.version}
    np.testing.assert_allclose([a.candle for a in answers], alone.candle, atol=1e-5)
    np.testing.assert_allclose([a.probs for a in answers], alone.probs, atol=1e-5)
    for i in infos(app.handle).values():
        assert i["batching"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}


def test_a_new_weights_version_is_served_by_every_replica_within_a_second(app):
    spec = spec_from_config(app.cfg)
    x = windows(app.cfg, 8, seed=1)
    rng = np.random.default_rng(2)
    yc, ya = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    old = {a[0].version for a in (app.handle.predict.remote(x[:1]).result() for _ in range(4))}
    step = app.client.call("train_batch", x, yc, ya)["step"]
    trained = time.monotonic()
    assert step not in old
    first_seen: dict[str, float] = {}
    while len(first_seen) < REPLICAS and time.monotonic() - trained < 5:
        for r in [app.handle.predict.remote(x[:1]) for _ in range(4)]:
            a = r.result(timeout_s=10)[0]
            if a.version == step:
                first_seen.setdefault(a.replica, time.monotonic() - trained)
        time.sleep(0.02)
    assert set(first_seen) == app.replicas, f"replicas serving version {step}: {first_seen}"
    assert max(first_seen.values()) < 1.0, first_seen
    assert set(infos(app.handle)) == app.replicas  # the same replicas: nothing restarted
    want = unbatched(app, x[:1])
    got = app.handle.predict.remote(x[:1]).result()[0]
    assert want.version == step == got.version and spec.window == x.shape[1]
    np.testing.assert_allclose(got.probs, want.probs[0], atol=1e-5)


def test_bad_input_is_a_clear_error_and_the_replicas_keep_serving(app):
    x = windows(app.cfg, 2)
    with pytest.raises(InvalidInputError, match=r"shape \(2, 16, 3\).*\(B, 16, 9\)"):
        app.handle.predict.remote(x[:, :, :3]).result(timeout_s=10)
    bad = x.copy()
    bad[1, 4, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or infinite.*sample 1"):
        app.handle.predict.remote(bad).result(timeout_s=10)
    with pytest.raises(InvalidInputError, match="serve.max_request_bytes"):
        app.handle.predict.remote(windows(app.cfg, 200)).result(timeout_s=10)
    # a bad request in the middle of a burst fails alone; the rest of its batch is answered
    burst = [app.handle.predict.remote(bad if i == 3 else x) for i in range(8)]
    ok = [r for i, r in enumerate(burst) if i != 3]
    assert all(len(r.result(timeout_s=10)) == 2 for r in ok)
    with pytest.raises(InvalidInputError):
        burst[3].result(timeout_s=10)
    assert set(infos(app.handle)) == app.replicas


def test_reconfigure_refuses_bad_values_and_applies_good_ones(app):
    before = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    for bad in ({"max_batch_size": 0}, {"batch_wait_timeout_s": -1}, {"max_batch": 4}):
        for _ in range(4):  # lands on either replica
            with pytest.raises(ConfigError):
                app.handle.reconfigure.remote(bad).result(timeout_s=10)
    assert all(i["batching"] == before for i in infos(app.handle).values())
    assert len(app.handle.predict.remote(windows(app.cfg, 1)).result(timeout_s=10)) == 1
    # a bad value in the config is refused before anything is deployed
    with pytest.raises(ConfigError, match="serve.max_batch_size=0"):
        build(replace(app.cfg, serve=replace(app.cfg.serve, max_batch_size=0)))

    good = {"max_batch_size": 2, "batch_wait_timeout_s": 0.02}
    deadline = time.monotonic() + 20
    while any(i["batching"] != good for i in infos(app.handle).values()):
        assert time.monotonic() < deadline, "a replica did not take the new batching"
        app.handle.reconfigure.remote(good).result(timeout_s=10)
    x = windows(app.cfg, 16)
    answers = [
        r.result(timeout_s=30)[0]
        for r in [app.handle.predict.remote(x[i : i + 1]) for i in range(16)]
    ]
    assert max(a.batch_windows for a in answers) == 2
    assert set(infos(app.handle)) == app.replicas
