"""The security defaults as plain code: the bind check, and the CLI refusing a public host
without a token before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from serve.security import bearer_ok, check_bind

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_token(host):
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_a_public_host_without_a_token_is_refused_with_the_fix(host):
    with pytest.raises(ConfigError, match="serve.token") as err:
        check_bind(host, None)
    assert "127.0.0.1" in str(err.value)
    check_bind(host, "a-token")  # with one it starts


def test_only_the_exact_bearer_token_passes():
    assert bearer_ok("Bearer t0k", "t0k")
    for header in (None, "", "t0k", "Bearer ", "Bearer t0k2", "bearer t0k", "Basic t0k"):
        assert not bearer_ok(header, "t0k"), header


def test_candleray_serve_on_a_public_host_without_a_token_exits_2_before_starting_ray(tmp_path):
    code = (
        "import sys, ray\n"
        "from pipelines.cli import main\n"
        f"rc = main(['serve', 'serve.host=0.0.0.0', 'run.home={tmp_path}'])\n"
        "print('ray started:', ray.is_initialized())\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "serve.token" in done.stderr and "0.0.0.0" in done.stderr
    assert "ray started: False" in done.stdout
    assert not any(tmp_path.iterdir())  # no actor, journal or checkpoint folder was made
