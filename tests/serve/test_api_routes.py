"""Every route of the REST API through real HTTP against the running Serve app (docs/API.md):
success, the 4xx answers with the field or thing named, and no change from a refused request.

The app runs once for the module, WITH serve.token set: the helper session sends it; the
auth tests (test_api_auth.py style checks here) leave it out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from serve_harness import (
    SYMBOL,
    TOPOLOGIES,
    RunningApp,
    candles,
    field_errors,
    fingerprint,
    other_topology,
    running_app,
    wait_job,
)

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def app(ray_cluster, tmp_path_factory) -> Iterator[RunningApp]:
    with running_app(tmp_path_factory.mktemp("api")) as a:  # serve.topology=single
        yield a


@pytest.fixture(scope="module")
def composed(app) -> Iterator[RunningApp]:
    with other_topology(app) as a:
        yield a


@pytest.fixture(params=TOPOLOGIES)
def either(request, app) -> RunningApp:
    """The routes that reach the model, on each topology (composed: beside ``app``)."""
    return app if request.param == "single" else request.getfixturevalue("composed")


# ---- the page, the schema, CORS -----------------------------------------------------------


def test_dashboard_library_and_schema_are_served_and_cors_is_closed(app):
    s = app.http(token=False)
    page = s.get(app.url + "/", timeout=30)
    assert page.status_code == 200 and "static/vendor/lightweight-charts.js" in page.text
    lib = s.get(app.url + "/static/vendor/lightweight-charts.js", timeout=30)
    assert lib.status_code == 200 and "Lightweight Charts" in lib.text[:500]
    paths = s.get(app.url + "/openapi.json", timeout=30).json()["paths"]
    assert {"/predict", "/sessions", "/sessions/{session_id}/train", "/backtests"} <= set(paths)
    for reply in (
        s.get(app.url + "/sessions", headers={"Origin": "http://evil.example"}, timeout=30),
        s.options(
            app.url + "/sessions",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
            },
            timeout=30,
        ),
    ):
        assert "access-control-allow-origin" not in {k.lower() for k in reply.headers}


# ---- inference ----------------------------------------------------------------------------


def test_predict_answers_a_ghost_candle_and_the_weights_version(either):
    app = either
    s = app.http()
    by_symbol = s.post(app.url + "/predict", json={"symbol": SYMBOL}, timeout=60)
    assert by_symbol.status_code == 200, by_symbol.text
    got = by_symbol.json()
    assert set(got["probs"]) == {"HOLD", "BUY", "SELL"}
    assert got["signal"] in {"HOLD", "BUY", "SELL"}
    assert abs(sum(got["probs"].values()) - 1) < 1e-4
    assert got["version"] == s.get(app.url + "/training-metrics", timeout=30).json()["version"]
    assert pd.Timestamp(got["ghost"]["time"]) > pd.Timestamp(got["time"])

    c = candles(app).iloc[:40]
    window = [
        {"time": t.isoformat(), **{k: float(r[k]) for k in c.columns}} for t, r in c.iterrows()
    ]
    by_candles = s.post(app.url + "/predict", json={"candles": window}, timeout=60)
    assert by_candles.status_code == 200, by_candles.text
    assert pd.Timestamp(by_candles.json()["time"]) == c.index[-1]
    # the same window by symbol and end time gives the same answer
    same = s.post(
        app.url + "/predict", json={"symbol": SYMBOL, "end": c.index[-1].isoformat()}, timeout=60
    )
    assert same.json()["probs"] == pytest.approx(by_candles.json()["probs"], abs=1e-5)

    neither = s.post(app.url + "/predict", json={}, timeout=30)
    assert neither.status_code == 422 and "candles" in neither.text
    bad_price = s.post(app.url + "/predict", json={"candles": [{**window[0], "high": -1}]})
    assert "candles.0.high" in field_errors(bad_price)
    short = s.post(app.url + "/predict", json={"candles": window[:5]}, timeout=30)
    assert short.status_code == 422 and "at least" in short.json()["detail"]
    unknown = s.post(app.url + "/predict", json={"symbol": "sample:NOPE"}, timeout=30)
    assert unknown.status_code == 404 and "NOPE" in unknown.json()["detail"]


# ---- sessions -----------------------------------------------------------------------------


def test_a_session_runs_shows_its_chart_and_trains_only_in_manual_mode(app):
    s = app.http()
    started = s.post(
        # 5 candles/s: the replay is still running when the manual step waits for its next candle
        app.url + "/sessions",
        json={"symbol": SYMBOL, "mode": "manual", "speed": 5},
        timeout=60,
    )
    assert started.status_code == 201, started.text
    sid = started.json()["id"]
    assert sid in [x["id"] for x in s.get(app.url + "/sessions", timeout=30).json()]

    # a window of 16 candles, then one prediction per candle: 5 predictions >= 20 candles drawn
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = s.get(f"{app.url}/sessions/{sid}", timeout=30).json()
        if status["metrics"]["predictions"] >= 5:
            break
        time.sleep(0.3)
    assert status["metrics"]["predictions"] >= 5, status
    chart = s.get(f"{app.url}/sessions/{sid}/chart", timeout=30).json()
    assert len(chart["candles"]) >= 20 and chart["ghosts"] and chart["signals"]
    assert all(isinstance(c["time"], int) for c in chart["candles"])
    newest = chart["candles"][-1]["time"]
    since = pd.Timestamp(newest, unit="s", tz="UTC").isoformat()
    later = s.get(f"{app.url}/sessions/{sid}/chart", params={"since": since}, timeout=30).json()
    assert all(c["time"] >= newest for c in later["candles"])

    trained = s.post(f"{app.url}/sessions/{sid}/train", json={"action": "BUY"}, timeout=30)
    assert trained.status_code == 200 and trained.json()["queued"] == 1
    # the marked bar is queued when the next candle closes, then trained in the background:
    # wait for it, or it could change the weights after the "before" fingerprint below
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = s.get(f"{app.url}/sessions/{sid}", timeout=30).json()["metrics"]
        if metrics["train_done"] >= 1 and metrics["train_pending"] == 0:
            break
        time.sleep(0.2)
    assert metrics["train_done"] == 1 and metrics["train_pending"] == 0, metrics

    switched = s.post(f"{app.url}/sessions/{sid}/mode", json={"mode": "none"}, timeout=30)
    assert switched.status_code == 200 and switched.json()["mode"] == "none"
    before = fingerprint(app)
    refused = s.post(f"{app.url}/sessions/{sid}/train", json={"action": "SELL"}, timeout=30)
    assert refused.status_code == 409 and "manual" in refused.json()["detail"]
    assert "action" in field_errors(
        s.post(f"{app.url}/sessions/{sid}/train", json={"action": "MAYBE"}, timeout=30)
    )
    assert "mode" in field_errors(
        s.post(f"{app.url}/sessions/{sid}/mode", json={"mode": "turbo"}, timeout=30)
    )
    assert "mode" in field_errors(
        s.post(app.url + "/sessions", json={"symbol": SYMBOL, "mode": "turbo"}, timeout=30)
    )
    assert "speed" in field_errors(
        s.post(app.url + "/sessions", json={"symbol": SYMBOL, "mode": "none", "speed": -1})
    )
    unknown_symbol = s.post(
        app.url + "/sessions", json={"symbol": "sample:NOPE", "mode": "none"}, timeout=30
    )
    assert unknown_symbol.status_code == 404, unknown_symbol.text
    for method, path, body in (
        ("GET", "/sessions/h0-nope", None),
        ("GET", "/sessions/nope/chart", None),
        ("POST", "/sessions/h7-nope/mode", {"mode": "none"}),
        ("POST", "/sessions/h0-nope/train", {"action": "BUY"}),
        ("DELETE", "/sessions/h0-nope", None),
    ):
        reply = s.request(method, app.url + path, json=body, timeout=30)
        assert reply.status_code == 404 and "GET /sessions" in reply.json()["detail"], path
    assert fingerprint(app) == before

    stopped = s.delete(f"{app.url}/sessions/{sid}", timeout=30)
    assert stopped.status_code == 200 and stopped.json() == {"stopped": sid}
    assert sid not in [x["id"] for x in s.get(app.url + "/sessions", timeout=30).json()]
    assert s.delete(f"{app.url}/sessions/{sid}", timeout=30).status_code == 404


# ---- annotations, jobs --------------------------------------------------------------------


def test_jobs_answer_at_once_and_a_failing_job_reports_its_error(app):
    s = app.http()
    assert s.get(app.url + "/annotations", timeout=30).json() == []
    t0 = time.monotonic()
    reply = s.post(app.url + "/training/jobs", json={"kind": "annotations"}, timeout=30)
    assert reply.status_code == 202 and time.monotonic() - t0 < 5
    job = wait_job(app, reply.json()["job_id"])
    assert job["state"] == "failed" and "no annotations" in job["error"]
    assert "kind" in field_errors(s.post(app.url + "/training/jobs", json={"kind": "x"}))
    assert "epochs" in field_errors(
        s.post(app.url + "/training/jobs", json={"kind": "history", "epochs": 0})
    )
    assert s.get(app.url + "/jobs/nope", timeout=30).status_code == 404


def test_a_backtest_job_reports_progress_and_results(app):
    s = app.http()
    c = candles(app)
    since, until = c.index[100].isoformat(), c.index[400].isoformat()
    reply = s.post(
        app.url + "/backtests", json={"symbols": [SYMBOL], "since": since, "until": until}
    )
    assert reply.status_code == 202, reply.text
    job = wait_job(app, reply.json()["job_id"])
    assert job["state"] == "done", job
    assert job["progress"] == {"done": 1, "total": 1}
    row = job["result"]["symbols"][0]
    assert {"return_pct", "pnl", "trades", "win_rate", "sharpe", "max_drawdown"} <= set(row)
    assert job["result"]["portfolio"]["symbols"] == 1
    assert reply.json()["job_id"] in [j["id"] for j in s.get(app.url + "/jobs").json()]
    before = fingerprint(app)
    assert "symbols" in field_errors(s.post(app.url + "/backtests", json={"symbols": []}))
    backwards = s.post(
        app.url + "/backtests", json={"symbols": [SYMBOL], "since": until, "until": since}
    )
    assert backwards.status_code == 422 and "since" in backwards.text
    assert fingerprint(app) == before


def test_annotations_are_checked_stored_listed_trained_on_and_removed(app):
    s = app.http()
    c = candles(app)
    entry, exit_ = c.iloc[50], c.iloc[60]
    body = {
        "symbol": SYMBOL,
        "timeframe": "1h",
        "side": "long",
        "entry_time": c.index[50].isoformat(),
        "entry_price": float(entry["close"]),
        "exit_time": c.index[60].isoformat(),
        "exit_price": float(exit_["close"]),
    }
    before = fingerprint(app)
    backwards = {**body, "entry_time": body["exit_time"], "exit_time": body["entry_time"]}
    assert s.post(app.url + "/annotations", json=backwards).status_code == 422
    unknown = s.post(app.url + "/annotations", json={**body, "symbol": "sample:NOPE"})
    assert unknown.status_code == 404, unknown.text
    assert "side" in field_errors(s.post(app.url + "/annotations", json={**body, "side": "up"}))
    assert "entry_price" in field_errors(
        s.post(app.url + "/annotations", json={**body, "entry_price": 0})
    )
    assert s.delete(app.url + "/annotations/nope").status_code == 404
    assert fingerprint(app) == before

    made = s.post(app.url + "/annotations", json=body)
    assert made.status_code == 201, made.text
    aid = made.json()["id"]
    listed = s.get(app.url + "/annotations", params={"symbol": SYMBOL, "timeframe": "1h"}).json()
    assert [a["id"] for a in listed] == [aid]
    assert s.get(app.url + "/annotations", params={"timeframe": "4h"}).json() == []

    steps = s.get(app.url + "/training-metrics").json()["steps"]
    job = wait_job(
        app, s.post(app.url + "/training/jobs", json={"kind": "annotations"}).json()["job_id"]
    )
    assert job["state"] == "done", job
    assert job["result"]["steps"] >= 1 and job["result"]["checkpoint"]
    assert s.get(app.url + "/training-metrics").json()["steps"] == steps + job["result"]["steps"]

    assert s.delete(f"{app.url}/annotations/{aid}").json() == {"removed": aid}
    assert s.get(app.url + "/annotations").json() == []


# ---- checkpoints, metrics, health, size limit ----------------------------------------------


def test_checkpoints_are_listed_loaded_and_marked_best(app):
    s = app.http()
    listed = s.get(app.url + "/checkpoints").json()
    assert app.checkpoint in [c["path"] for c in listed]
    before = fingerprint(app)
    for route in ("/checkpoints/load", "/checkpoints/best"):
        reply = s.post(app.url + route, json={"path": "/nope/ckpt.pt"})
        assert reply.status_code == 404 and "GET /checkpoints" in reply.json()["detail"]
        assert "path" in field_errors(s.post(app.url + route, json={"path": ""}))
    assert fingerprint(app) == before

    best = s.post(app.url + "/checkpoints/best", json={"path": app.checkpoint})
    assert best.status_code == 200 and best.json()["alias"] == "best"
    flags = {c["path"]: c["is_best"] for c in s.get(app.url + "/checkpoints").json()}
    assert flags[app.checkpoint] and sum(flags.values()) == 1

    generation = s.get(app.url + "/training-metrics").json()["generation"]
    loaded = s.post(app.url + "/checkpoints/load", json={"path": app.checkpoint})
    assert loaded.status_code == 200 and loaded.json()["generation"] != generation
    assert loaded.json()["steps"] == 0  # the checkpoint was saved before any training


def test_training_metrics_and_health(either):
    from serve.app import model_deployment

    app = either
    s = app.http(token=False)
    m = s.get(app.url + "/training-metrics").json()
    assert {"current", "best", "steps", "trend", "last_train_time", "history"} <= set(m)
    assert "served_version" in m
    h = s.get(app.url + "/health").json()
    assert h["status"] == "ok", h
    assert h["model_actor"]["ok"] and h["predictor"]["ok"] and h["session_hosts"][0]["ok"]
    # the replica that answered holds the model in this topology: the ingress itself in single
    assert h["predictor"]["deployment"] == model_deployment(app.cfg.serve), h["predictor"]


# after the checkpoint test: the steps trained here would prune the checkpoint it loads
def test_one_training_job_at_a_time_and_a_cancel_stops_it(app):
    """A second training job while one runs is a 409 naming it (the two would interleave their
    steps on the one ModelActor); POST /jobs/{id}/cancel stops the job part-way: it ends
    ``cancelled`` short of its total, and the model then trains only the next job's steps."""
    s = app.http()
    started = s.post(app.url + "/training/jobs", json={"kind": "history", "epochs": 1000})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 120
    while s.get(f"{app.url}/jobs/{job_id}", timeout=30).json()["progress"]["done"] == 0:
        assert time.monotonic() < deadline, "the training job never reported a step"
        time.sleep(0.3)
    second = s.post(app.url + "/training/jobs", json={"kind": "history", "epochs": 1})
    assert second.status_code == 409 and job_id in second.json()["detail"], second.text
    asked = s.post(f"{app.url}/jobs/{job_id}/cancel", timeout=30)
    assert asked.status_code == 202 and asked.json()["cancel_requested"], asked.text
    job = wait_job(app, job_id, timeout_s=120)
    assert job["state"] == "cancelled", job
    assert 0 < job["progress"]["done"] < job["progress"]["total"]
    assert "cancelled on request" in job["error"]
    assert s.post(f"{app.url}/jobs/{job_id}/cancel", timeout=30).status_code == 409
    assert s.post(app.url + "/jobs/training-nope/cancel", timeout=30).status_code == 404
    steps = s.get(app.url + "/training-metrics", timeout=30).json()["steps"]
    sessions_training = any(
        x["mode"] != "none" and x["state"] == "running"
        for x in s.get(app.url + "/sessions", timeout=30).json()
    )
    nxt = s.post(app.url + "/training/jobs", json={"kind": "history", "epochs": 1})
    assert nxt.status_code == 202, nxt.text  # the cancelled job no longer holds the model
    done = wait_job(app, nxt.json()["job_id"], timeout_s=120)
    assert done["state"] == "done", done
    if not sessions_training:  # nothing else trains: the cancelled job added no step since
        after = s.get(app.url + "/training-metrics", timeout=30).json()["steps"]
        assert after == steps + done["result"]["steps"]


def test_a_body_past_the_size_limit_is_refused_with_413_and_changes_nothing(app):
    s = app.http()
    before = fingerprint(app)
    big = {"symbol": SYMBOL, "mode": "none", "start": "x" * 30_000}
    reply = s.post(app.url + "/sessions", json=big, timeout=30)
    assert reply.status_code == 413 and "serve.max_request_bytes" in reply.json()["detail"]
    assert fingerprint(app) == before


# ---- auth: every state-changing route needs the token ---------------------------------------


def state_changing_routes(app: RunningApp) -> list[tuple[str, str]]:
    paths = app.http(token=False).get(app.url + "/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, ops in paths.items()
        for method in ops
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    ]


def test_every_state_changing_route_needs_the_token_and_never_echoes_it(app):
    s = app.http()
    sid = s.post(app.url + "/sessions", json={"symbol": SYMBOL, "mode": "manual"}).json()["id"]
    routes = state_changing_routes(app)
    assert len(routes) >= 10, routes
    before = fingerprint(app)
    seen = []
    for method, path in routes:
        url = app.url + path.replace("{session_id}", sid).replace("{annotation_id}", "x")
        url = url.replace("{job_id}", "training-x")
        assert "{" not in url, f"no value for a path parameter of {path}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": app.token}):
            reply = app.http(token=False).request(method, url, json={}, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.headers["www-authenticate"] == "Bearer"
            seen.append(reply.text + str(reply.headers))
    assert fingerprint(app) == before
    assert s.get(app.url + "/sessions").status_code == 200  # reads stay open
    assert s.delete(f"{app.url}/sessions/{sid}").status_code == 200
    assert not [t for t in seen if app.token in t]


def test_the_token_is_in_no_log_line(app):
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    leaked = [p for p in logs.rglob("*") if p.is_file() and app.token.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert list(logs.rglob("serve/*.log")), "no Serve logs were searched"


# ---- fuzzing over the OpenAPI schema -------------------------------------------------------


def fuzz(app: RunningApp, methods: list[str], mode: Any, examples: int) -> list[tuple]:
    """Cases schemathesis generates for ``methods``; returns (method, path, status) of each."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(app.url + "/openapi.json").include(method=methods)
    http = app.http()
    answers: list[tuple] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        reply = case.call(base_url=app.url, session=http, timeout=30)
        answers.append((case.method, case.path, reply.status_code, reply.text[:300]))

    run()
    return answers


def test_fuzzed_bad_requests_answer_4xx_and_change_nothing_and_reads_never_5xx(app):
    from schemathesis import GenerationMode

    t0 = time.monotonic()
    before = fingerprint(app)
    bad = fuzz(app, ["POST", "PUT", "DELETE"], GenerationMode.NEGATIVE, 150)
    wrong = [a for a in bad if not 400 <= a[2] < 500]
    assert not wrong, wrong[:5]
    assert fingerprint(app) == before
    assert len({(m, p) for m, p, *_ in bad}) >= 8  # most routes were tried
    reads = fuzz(app, ["GET"], GenerationMode.POSITIVE, 80)
    assert not [a for a in reads if a[2] >= 500], reads[:5]
    assert time.monotonic() - t0 < 60
