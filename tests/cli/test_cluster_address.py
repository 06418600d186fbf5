"""A ``ray.address`` where no cluster answers is an error naming the setting, at once: Ray's
own connect would retry it for some 12 minutes."""

from __future__ import annotations

import subprocess
import sys

from support import free_port


def test_an_unreachable_ray_address_is_an_error_naming_it(tmp_path):
    port = free_port()  # closed again: nothing listens there
    # a process of its own: the tests' shared Ray is initialised here, and init_ray leaves
    # an initialised Ray alone
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli.parser",
            "train",
            f"ray.address=127.0.0.1:{port}",
            f"run.home={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=180,  # a hang guard: Ray's connect retries for minutes
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ray.address='127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}" in proc.stderr
    assert "ray start --head" in proc.stderr  # the fix
    assert "Ray logs" not in proc.stderr  # no local cluster was started instead
