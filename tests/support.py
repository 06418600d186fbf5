"""Helpers shared by tests: a free local port, the tiny model/data setups as overrides, a
random training batch, a subprocess's output read line by line as it comes, and a
``candleray`` command in a session of its own (what it leaves running counted)."""

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
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


def tiny_sweep_overrides(length: int, epochs: int) -> list[str]:
    """One short synthetic symbol and a tiny model for sweep trials (one CPU each)."""
    return [
        "data.symbols=[synthetic:SYN0]",
        f"data.synthetic.length={length}",
        "data.extra_timeframes=[]",
        "features.window=16",
        "model.d_model=16",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.dim_feedforward=32",
        "train.batch_size=32",
        f"train.epochs={epochs}",
        "sweep.trial_num_cpus=1",
    ]


CANDLERAY = str(Path(sys.executable).with_name("candleray"))


def in_session(sid: int) -> list[str]:
    """The processes of session ``sid`` still running (zombies are gone for good)."""
    left = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.getsid(int(p.name)) != sid or "State:\tZ" in (p / "status").read_text():
                continue
            cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
            left.append(f"{p.name} {cmdline.decode(errors='replace')}")
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return left


class SessionCommand:
    """``candleray ...`` as a user starts it: a session of its own (so every process it and its
    Ray cluster start can be counted afterwards), SIGINT at its default (a background job of a
    non-interactive shell, this test's parent in CI, inherits it ignored), output read by a
    thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        def default_sigint() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.proc = subprocess.Popen(
            [CANDLERAY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=default_sigint,
        )
        self.output = Output(self.proc)

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a line holding ``text`` is printed; fails (and kills it) after ``timeout``."""
        import pytest

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.output.next_line(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if text in line:
                return
        self.kill()
        pytest.fail(f"{text!r} never printed:\n{self.output.text[-4000:]}")

    def finish(self, timeout: float, after: str = "") -> tuple[int, str, list[str]]:
        """Its exit code, its whole output, and what is left in its session once every process
        had its chance to go (a condition with a deadline, not a sleep); nothing is left after."""
        import pytest

        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout:.0f}s{after}:\n{self.output.text[-4000:]}")
        while self.output.next_line(timeout=30) is not None:
            pass
        deadline = time.monotonic() + 60
        while (left := in_session(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.kill()  # a failed test leaves nothing either
        return rc, self.output.text, left

    def stop(self, sig: int, timeout: float) -> tuple[int, str, list[str]]:
        """Send ``sig``, then ``finish``."""
        self.proc.send_signal(sig)
        return self.finish(timeout, after=f" after {sig!r}")

    def kill(self) -> None:
        for entry in in_session(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.split()[0]), signal.SIGKILL)
