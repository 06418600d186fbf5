"""SIGTERM (systemd, Docker, Kubernetes) stops a long command as Ctrl-C does: cleanly, with
nothing left behind.

Each command runs as a user would start it, in a session of its own, so every process it and
its Ray cluster start can be counted afterwards (Ray's DashboardAgent and RuntimeEnvAgent
outlived a SIGTERM before). SIGINT is reset to its default in the child: a background job of
a non-interactive shell (this test's parent, in CI) inherits it ignored.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import SessionCommand, free_port, tiny_overrides

READY_S = 240.0  # a Ray cluster, the ModelActor and Serve start on a loaded 2-core machine
STOP_S = 120.0


def tiny(home: Path, name: str) -> list[str]:
    return [*tiny_overrides(home, name), "live.hosts=1"]


pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_on_the_signal_and_leaves_nothing(tmp_path, sig):
    cmd = SessionCommand(
        ["serve", *tiny(tmp_path, "sigserve"), f"serve.port={free_port()}"], tmp_path
    )
    cmd.wait_for("dashboard:", READY_S)
    rc, out, left = cmd.stop(sig, STOP_S)
    assert left == [], f"left running after {sig!r}: {left}\n{out}"
    assert rc == 0, out
    assert "stopping: Serve app, session hosts, ModelActor" in out
    assert "SIGTERM received" not in out  # Ray's fatal-signal handler did not abort it


def test_live_stops_on_sigterm_and_leaves_nothing(tmp_path):
    args = ["live", "--symbols", "synthetic:SYN0", "--speed", "2", *tiny(tmp_path, "siglive")]
    cmd = SessionCommand(args, tmp_path)
    cmd.wait_for("training queue:", READY_S)  # the sessions are running
    rc, out, left = cmd.stop(signal.SIGTERM, STOP_S)
    assert left == [], f"left running after SIGTERM: {left}\n{out}"
    assert rc == 0, out
    assert "stopping" in out


def test_train_stops_on_sigterm_and_leaves_nothing(tmp_path):
    args = ["train", *tiny(tmp_path, "sigtrain"), "train.epochs=10000"]
    cmd = SessionCommand(args, tmp_path)
    cmd.wait_for("epoch 1/10000", READY_S)  # training has started; it would run for long
    rc, out, left = cmd.stop(signal.SIGTERM, STOP_S)
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
