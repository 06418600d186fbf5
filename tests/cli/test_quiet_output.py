"""A command's output is its own: Ray's workers' INFO lines, its colour codes and its token
auth notice stay out of it; it says once where Ray's logs are; warnings still come through."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import CLI_TINY_MODEL, tiny_overrides

from pipelines.cluster import quiet_serve_driver_logs, ray_env

CANDLERAY = str(Path(sys.executable).with_name("candleray"))


@pytest.mark.slow
def test_train_prints_no_ray_worker_noise(tmp_path):
    args = [*tiny_overrides(tmp_path, "quiet"), "tracking.enabled=true", *CLI_TINY_MODEL]
    done = subprocess.run(
        [CANDLERAY, "train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "MLflow run" in out and "Held-out evaluation" in out  # the command's own lines
    # the MLflow writer, the ModelActor: their INFO lines used to fill the output
    assert not re.search(r"\(\w+ pid=\d+\).* INFO ", out), out
    assert "\x1b[" not in out, out  # no ANSI colour codes in a pipe
    assert "Token authentication is enabled" not in out, out
    where = re.findall(r"Ray logs \(actors, tasks, Serve\): (\S+)", out)
    assert len(where) == 1, out  # said once
    assert Path(where[0]).is_dir() and any(Path(where[0]).glob("worker-*")), where


def test_workers_and_serve_keep_their_info_lines_only_without_v(monkeypatch):
    assert ray_env(verbose=False, tty=False) == {
        "RAY_COLOR_PREFIX": "0",
        "RAY_SERVE_LOG_TO_STDERR": "0",
    }
    assert ray_env(verbose=True, tty=True) == {}  # -v on a terminal: Ray as it is

    logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(logger, "filters", [])

    def passes(level: int) -> bool:
        return bool(logger.filter(logging.LogRecord("ray.serve", level, "", 0, "m", (), None)))

    quiet_serve_driver_logs(verbose=False)
    quiet_serve_driver_logs(verbose=False)  # the demo connects three times: one filter
    assert len(logger.filters) == 1
    assert not passes(logging.INFO) and passes(logging.WARNING)  # warnings still show
    quiet_serve_driver_logs(verbose=True)
    assert passes(logging.INFO)
