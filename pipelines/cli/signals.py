"""Ctrl-C and SIGTERM stop a command the same way, so nothing is left behind.

A long command (serve, live, train, demo) cleans up on the way out: it stops the Serve app and
the session hosts, ends the MLflow run and shuts down the Ray cluster it started. Ctrl-C
reaches that code as ``KeyboardInterrupt``. SIGTERM (what systemd, Docker and Kubernetes send)
did not: Python's default kills the process outright, and ``ray.init`` installs handlers that
exit or abort it mid-cleanup, which left Ray's DashboardAgent and RuntimeEnvAgent running.

``stop_on_signals`` makes both signals raise ``Stopped`` (a ``KeyboardInterrupt``), so every
``finally`` and ``except KeyboardInterrupt`` runs. It installs the handlers explicitly: a
command started as a background job of a non-interactive shell inherits SIGINT ignored, and
Python then installs no Ctrl-C handler of its own. ``ray.init`` replaces the SIGTERM handler
(with ``sys.exit``, and its core worker's fatal-signal handler that aborts the process), so
``pipelines.cluster.init_ray`` puts back the handlers that were there before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The command was asked to stop by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Handler:
    """Raises ``Stopped`` on the first signal; later ones only say that cleanup is under way
    (a second Ctrl-C must not cut short the shutdown that leaves nothing behind)."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            # os.write, not print: a handler may run in the middle of another print
            os.write(
                2,
                f"candleray: {signal.Signals(signum).name} again: still stopping "
                "(Ray, sessions, MLflow run); SIGKILL abandons the cleanup\n".encode(),
            )
            return
        self.stopping = True
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Stopped`` in the main thread while inside; the previous
    handlers come back on the way out. Elsewhere than the main thread it changes nothing
    (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for a command ended by a signal: 128 + its number (130, 143)."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)
