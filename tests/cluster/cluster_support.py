"""Helpers of the multi-node tests: a ``candleray`` command in a subprocess, read as it runs,
and a hang-guarded wait."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CANDLERAY = str(Path(sys.executable).with_name("candleray"))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    """``check()``'s first truthy value; a hang guard, not a deadline the test means to meet."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)
    return got


class Command:
    """``candleray ...`` in a subprocess, its output read line by line as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [CANDLERAY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail("candleray hung:\n" + "".join(self.output[-50:]))
            if line is None:
                return self.proc.wait(timeout=60)
            self.output.append(line)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill it if it still runs (a test that failed before its end)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
