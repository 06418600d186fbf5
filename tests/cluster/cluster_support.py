"""Helpers of the multi-node tests: a ``candleray`` command in a subprocess, read as it runs,
and a hang-guarded wait."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Output

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
        self.output = Output(self.proc)

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.output.next_line(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail("candleray hung:\n" + "".join(self.output.seen[-50:]))
            if line is None:
                return self.proc.wait(timeout=60)

    @property
    def text(self) -> str:
        return self.output.text

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill it if it still runs (a test that failed before its end)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
