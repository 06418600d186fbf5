"""Helpers shared by tests: a free local port, and the tiny model/data setup as overrides."""

import socket


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
