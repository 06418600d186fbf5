"""Helpers shared by tests: a free local port, the tiny model/data setups as overrides, a
random training batch, and a subprocess's output read line by line as it comes."""

import queue
import socket
import subprocess
import threading
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


class Output:
    """A subprocess's merged stdout/stderr, read by a thread so the pipe never fills and a test
    can wait for a line with a hang guard; ``lines`` ends with ``None`` at EOF."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line (kept in ``seen``); None at EOF; ``queue.Empty`` after ``timeout``."""
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.seen.append(line)
        return line

    @property
    def text(self) -> str:
        return "".join(self.seen)
