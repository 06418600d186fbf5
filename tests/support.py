"""Helpers shared by tests: a free local port, the tiny model/data setups as overrides, and a
random training batch."""

import socket
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_overrides(home: object, name: str) -> list[str]:
    """A small synthetic symbol and a tiny model: fast enough for any test, CLI ones included."""
    return [
        f"run.home={home}",
        f"run.name={name}",
        "tracking.enabled=false",
        "data.symbols=[synthetic:SYN0]",
        "data.synthetic.length=600",
        "features.window=16",
        "model.d_model=32",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.dim_feedforward=64",
        "train.batch_size=16",
        "ray.call_timeout_s=60",
        "ray.torch_threads=1",
    ]


# the tiny model of the CLI tests that train end to end (data and tracking are each test's own)
CLI_TINY_MODEL = (
    "features.window=16",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "train.batch_size=32",
    "train.epochs=1",
    "ray.torch_threads=1",
)


def random_batch(core: Any, b: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random training batch (x, next-candle targets, actions) for ``core.spec``."""
    rng = np.random.default_rng(seed)
    s = core.spec
    return (
        rng.standard_normal((b, s.window, s.n_features)).astype(np.float32),
        rng.standard_normal((b, 5)).astype(np.float32),
        rng.integers(0, 3, b),
    )
