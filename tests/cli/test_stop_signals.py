"""SIGTERM (systemd, Docker, Kubernetes) stops a long command as Ctrl-C does: cleanly, with
nothing left behind.

Each command runs as a user would start it, in a session of its own, so every process it and
its Ray cluster start can be counted afterwards (Ray's DashboardAgent and RuntimeEnvAgent
outlived a SIGTERM before). SIGINT is reset to its default in the child: a background job of
a non-interactive shell (this test's parent, in CI) inherits it ignored.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Output, free_port, tiny_overrides

CANDLERAY = str(Path(sys.executable).with_name("candleray"))
READY_S = 240.0  # a Ray cluster, the ModelActor and Serve start on a loaded 2-core machine
STOP_S = 120.0


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


class Command:
    """``candleray ...`` in its own session, SIGINT at its default, output read by a thread."""

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

    def stop(self, sig: int) -> tuple[int, str, list[str]]:
        """Send ``sig``; the exit code, the whole output, and what is left in the session
        once every process had its chance to go (a condition with a deadline, not a sleep)."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {STOP_S:.0f}s after {sig!r}:\n{self.output.text}")
        while self.output.next_line(timeout=30) is not None:
            pass
        deadline = time.monotonic() + 60
        while (left := in_session(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.kill()  # a failed test leaves nothing either
        return rc, self.output.text, left

    def kill(self) -> None:
        for entry in in_session(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.split()[0]), signal.SIGKILL)


def tiny(home: Path, name: str) -> list[str]:
    return [*tiny_overrides(home, name), "live.hosts=1"]


pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_on_the_signal_and_leaves_nothing(tmp_path, sig):
    cmd = Command(["serve", *tiny(tmp_path, "sigserve"), f"serve.port={free_port()}"], tmp_path)
    cmd.wait_for("dashboard:", READY_S)
    rc, out, left = cmd.stop(sig)
    assert left == [], f"left running after {sig!r}: {left}\n{out}"
    assert rc == 0, out
    assert "stopping: Serve app, session hosts, ModelActor" in out
    assert "SIGTERM received" not in out  # Ray's fatal-signal handler did not abort it


def test_live_stops_on_sigterm_and_leaves_nothing(tmp_path):
    args = ["live", "--symbols", "synthetic:SYN0", "--speed", "2", *tiny(tmp_path, "siglive")]
    cmd = Command(args, tmp_path)
    cmd.wait_for("training queue:", READY_S)  # the sessions are running
    rc, out, left = cmd.stop(signal.SIGTERM)
    assert left == [], f"left running after SIGTERM: {left}\n{out}"
    assert rc == 0, out
    assert "stopping" in out


def test_train_stops_on_sigterm_and_leaves_nothing(tmp_path):
    args = ["train", *tiny(tmp_path, "sigtrain"), "train.epochs=10000"]
    cmd = Command(args, tmp_path)
    cmd.wait_for("epoch 1/10000", READY_S)  # training has started; it would run for long
    rc, out, left = cmd.stop(signal.SIGTERM)
    assert left == [], f"left running after SIGTERM: {left}\n{out}"
    assert rc == 128 + signal.SIGTERM, out
    assert "candleray: train stopped (SIGTERM)" in out


def test_a_command_started_with_sigint_ignored_still_stops_on_ctrl_c(tmp_path):
    """Python installs no Ctrl-C handler when it inherits SIGINT ignored; the entry point
    installs one itself."""
    script = (
        "import os, signal\n"
        "from pipelines.cli.signals import stop_on_signals\n"
        "with stop_on_signals():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        signal.pause()\n"
        "    except KeyboardInterrupt as exc:\n"
        "        print('stopped by', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert done.stdout.strip() == "stopped by SIGINT", done.stderr
