"""The security defaults as plain code: the bind and token checks, the CLI refusing a public
host without a token before it starts anything, and the API app in-process (no Ray): the Host
check, the body cap and deadline, the token's sources, the files it serves, /docs offline."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serve_harness import FakeBackend, asgi_call

from conf import ServeConfig
from pipelines.config import load_config
from pipelines.errors import ConfigError
from serve.api import build_api
from serve.security import bearer_ok, check_bind, check_security

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_token(host):
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_a_public_host_without_a_token_is_refused_with_the_fix(host):
    with pytest.raises(ConfigError, match="serve.token") as err:
        check_bind(host, None)
    assert "127.0.0.1" in str(err.value)
    check_bind(host, "a-token-of-16-chars")  # with one it starts


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


GOOD_TOKEN = "9f2c41d0b7e85a63c1d4e0f7a2b9c8d5"


def app_with(backend=None, **serve):
    return build_api(backend or FakeBackend(), ServeConfig(**serve))


# -- tokens: strong enough, and from outside argv -------------------------------------------


@pytest.mark.parametrize("token", ["a", "s3cret", "aaaaaaaaaaaaaaaaaaaa", "abababababababab"])
def test_a_guessable_token_is_refused_with_how_to_make_one(token):
    with pytest.raises(ConfigError, match="too weak") as err:
        check_security(ServeConfig(token=token))
    assert "openssl rand" in str(err.value) and "serve.token_file" in str(err.value)
    assert repr(token) not in str(err.value)  # the token itself is not shown
    check_security(ServeConfig(token=GOOD_TOKEN))


def test_the_token_comes_from_a_file_or_the_environment_and_the_config_wins(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(GOOD_TOKEN + "\n")
    monkeypatch.delenv("CANDLERAY_SERVE_TOKEN", raising=False)
    assert load_config(None, [f"serve.token_file={path}"]).serve.token == GOOD_TOKEN
    assert load_config(None, []).serve.token is None
    monkeypatch.setenv("CANDLERAY_SERVE_TOKEN", "from-the-environment-0123")
    assert load_config(None, []).serve.token == "from-the-environment-0123"
    assert load_config(None, [f"serve.token_file={path}"]).serve.token == GOOD_TOKEN
    assert load_config(None, [f"serve.token={GOOD_TOKEN}x"]).serve.token == GOOD_TOKEN + "x"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("", "it is empty"), ("a\nb\n", "several lines")],
)
def test_a_bad_token_file_is_refused_with_the_rule(tmp_path, content, message):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"serve.token_file={path}"])
    path.write_text(GOOD_TOKEN)
    with pytest.raises(ConfigError, match="give one"):
        load_config(None, [f"serve.token_file={path}", f"serve.token={GOOD_TOKEN}"])


# -- Host header: DNS rebinding -------------------------------------------------------------


@pytest.mark.parametrize("token", [None, GOOD_TOKEN])
def test_a_foreign_host_is_refused_for_reads_and_writes_with_the_setting_named(token):
    backend = FakeBackend()
    app = app_with(backend, token=token)
    foreign = {"host": "rebind.attacker.example:8000"}
    auth = {"authorization": f"Bearer {token}"} if token else {}
    body = json.dumps({"symbol": "synthetic:SYN0", "mode": "none"}).encode()
    for method, path, data in (
        ("GET", "/sessions", None),
        ("GET", "/", None),
        ("POST", "/sessions", body),
    ):
        reply, _ = asgi_call(app, method, path, data, headers={**foreign, **auth})
        assert reply.status == 400, (method, path, reply.body)
        assert "serve.allowed_hosts" in reply.json()["detail"]
    assert backend.calls == []  # nothing reached the backend
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        reply, _ = asgi_call(app, "GET", "/sessions", headers={"host": host})
        assert reply.status == 200, host


def test_allowed_hosts_and_a_public_serve_host_add_names_and_bad_entries_are_refused():
    app = app_with(host="10.1.2.3", token=GOOD_TOKEN, allowed_hosts=("box.lan",))
    for host, status in (
        ("box.lan:8000", 200),
        ("10.1.2.3:8000", 200),
        ("BOX.LAN.", 200),
        ("10.9.9.9", 400),
        ("evil.example", 400),
        ("", 400),
    ):
        reply, _ = asgi_call(app, "GET", "/sessions", headers={"host": host})
        assert reply.status == status, host
    wildcard = app_with(host="0.0.0.0", token=GOOD_TOKEN)  # any IP literal: not a rebinding name
    assert (
        asgi_call(wildcard, "GET", "/sessions", headers={"host": "192.168.1.5:8000"})[0].status
        == 200
    )
    assert (
        asgi_call(wildcard, "GET", "/sessions", headers={"host": "evil.example"})[0].status == 400
    )
    for entry in ("http://box.lan", "box.lan:8000", "a b"):
        with pytest.raises(ConfigError, match="serve.allowed_hosts entry"):
            check_security(ServeConfig(allowed_hosts=(entry,)))


# -- request bodies: the cap whatever the framing, a deadline, nothing echoed -----------------


def test_a_chunked_body_past_the_cap_is_413_and_not_read_to_its_end():
    backend = FakeBackend()
    app = app_with(backend, max_request_bytes=10_000)
    chunks = [b'{"symbol": "sample:EURUSD"' + b" " * 4000] + [b" " * 4000] * 1000 + [b"}"]
    reply, taken = asgi_call(app, "POST", "/predict", chunks=chunks)
    assert reply.status == 413, reply.body
    assert "serve.max_request_bytes" in reply.json()["detail"]
    assert taken <= 4  # stopped at the cap, not after the ~4 MB that follow
    assert backend.calls == []
    small = [b'{"symbol": ', b'"sample:EURUSD"}']  # under the cap, chunked: served
    assert asgi_call(app, "POST", "/predict", chunks=small)[0].status == 200
    assert backend.calls == [("predict", (None, "sample:EURUSD", None))]


def test_an_oversized_body_with_content_length_is_413_before_it_is_read():
    app = app_with(max_request_bytes=1000)
    reply, taken = asgi_call(app, "POST", "/predict", b"{" + b" " * 5000 + b"}")
    assert reply.status == 413 and taken == 0


def test_a_body_that_never_arrives_gets_408_instead_of_holding_the_request():
    app = app_with(body_timeout_s=0.2)
    reply, _ = asgi_call(
        app, "POST", "/predict", headers={"content-length": "100"}, receive_hangs=True
    )
    assert reply.status == 408
    assert "serve.body_timeout_s" in reply.json()["detail"]


def test_a_bad_body_under_the_cap_is_not_echoed_back_whole():
    app = app_with(max_request_bytes=1_000_000)
    body = json.dumps({"symbol": "x" * 300_000, "bogus": "y" * 300_000}).encode()
    reply, _ = asgi_call(app, "POST", "/predict", body)
    assert reply.status == 422
    assert len(reply.body) < 2_000, len(reply.body)
    assert {"symbol", "bogus"} <= {e["loc"][-1] for e in reply.json()["detail"]}


# -- what is served: the page's own files, /docs without a CDN ------------------------------


def test_static_serves_the_page_files_and_not_node_modules_or_package_files():
    app = app_with()
    for path in ("/static/app.js", "/static/style.css", "/static/vendor/lightweight-charts.js"):
        assert asgi_call(app, "GET", path)[0].status == 200, path
    for path in (
        "/static/package.json",
        "/static/package-lock.json",
        "/static/node_modules/lightweight-charts/package.json",
        "/static/index.html",
        "/static/../security.py",
        "/static/vendor/x.js",
    ):
        assert asgi_call(app, "GET", path)[0].status == 404, path


def test_docs_loads_swagger_ui_from_the_app_itself():
    app = app_with()
    reply, _ = asgi_call(app, "GET", "/docs")
    assert reply.status == 200
    html = reply.body.decode()
    urls = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', html)
    assert urls and not [u for u in urls if "//" in u], urls  # no other host named
    for url in urls:
        assert asgi_call(app, "GET", "/" + url)[0].status == 200, url
    assert asgi_call(app, "GET", "/redoc")[0].status == 404  # ReDoc would need a CDN


# -- POST /backtests: a checkpoint only from the store's listing ----------------------------


def test_a_backtest_checkpoint_must_be_one_the_store_lists():
    listed = [{"path": "/ck/model/step_10.pt", "name": "step_10.pt", "is_best": False}]
    backend = FakeBackend(checkpoints=listed)
    app = app_with(backend)
    for wanted in (
        "http://127.0.0.1:9/internal?x=1",
        "/etc/passwd",
        "/etc/no_such_file",
        "s3://bucket/x.pt",
        "best",
    ):
        body = json.dumps({"symbols": ["synthetic:SYN0"], "checkpoint": wanted}).encode()
        reply, _ = asgi_call(app, "POST", "/backtests", body)
        assert reply.status == 404, (wanted, reply.body)
        assert "GET /checkpoints" in reply.json()["detail"]
    assert [c for c, _ in backend.calls if c == "start_job"] == []  # nothing was started
    for wanted in ("step_10.pt", "/ck/model/step_10.pt", "latest"):
        body = json.dumps({"symbols": ["synthetic:SYN0"], "checkpoint": wanted}).encode()
        reply, _ = asgi_call(app, "POST", "/backtests", body)
        assert reply.status == 202, reply.body
    started = [a[1]["checkpoint"] for c, a in backend.calls if c == "start_job"]
    assert started == ["/ck/model/step_10.pt", "/ck/model/step_10.pt", "latest"]


def test_serve_settings_for_timeouts_are_checked():
    with pytest.raises(ConfigError, match="serve.body_timeout_s"):
        load_config(None, ["serve.body_timeout_s=0"])
    s = dataclasses.replace(ServeConfig(), keep_alive_timeout_s=7, request_timeout_s=60.0)
    from serve.config import http_options

    assert http_options(s) == {
        "host": "127.0.0.1",
        "port": 8000,
        "keep_alive_timeout_s": 7,
        "request_timeout_s": 60.0,
    }
