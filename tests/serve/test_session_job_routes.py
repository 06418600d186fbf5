"""The session and job routes in-process (no Ray): a replay ``start`` is a JSON integer row or
an ISO time text, never numeric text; a cancel route for jobs; limits and conflicts answer
429 / 409 with the backend's message, never a 5xx."""

from __future__ import annotations

import json

import pytest
from serve_harness import FakeBackend, asgi_call

from conf import ServeConfig
from pipelines.errors import CapacityError, ConflictError
from serve.api import build_api


def post(app, path, body):
    reply, _ = asgi_call(app, "POST", path, json.dumps(body).encode())
    return reply


SESSION = {"symbol": "synthetic:SYN0", "mode": "none", "speed": 0}


@pytest.mark.parametrize(
    "start, sent",
    [(-300, -300), (500, 500), ("2024-03-01T00:00:00Z", "2024-03-01T00:00:00+00:00")],
)
def test_a_start_is_a_row_as_an_integer_or_a_time_as_text(start, sent):
    backend = FakeBackend()
    reply = post(build_api(backend, ServeConfig()), "/sessions", {**SESSION, "start": start})
    assert reply.status == 201, reply.body
    ((name, (spec,)),) = backend.calls
    assert name == "start_session" and spec["start"] == sent


@pytest.mark.parametrize("start", ["-300", "300", 1.5, True, "yesterday", [1]])
def test_any_other_start_is_a_422_naming_both_forms(start):
    backend = FakeBackend()
    reply = post(build_api(backend, ServeConfig()), "/sessions", {**SESSION, "start": start})
    assert reply.status == 422, reply.body
    (error,) = reply.json()["detail"]
    assert error["loc"] == ["body", "start"]
    assert "JSON integer" in error["msg"] and "ISO 8601 time" in error["msg"]
    assert backend.calls == []  # a refused body changes nothing


def test_a_job_is_cancelled_through_its_route():
    backend = FakeBackend()
    reply = post(build_api(backend, ServeConfig()), "/jobs/training-1/cancel", {})
    assert reply.status == 202
    assert backend.calls == [("cancel_job", ("training-1",))]


class Refusing(FakeBackend):
    async def start_session(self, spec):
        raise CapacityError("session host 0 holds 2 sessions, its limit (live.max_sessions=2)")

    async def start_job(self, kind, params):
        raise ConflictError("training job training-1 is running")


def test_limits_and_conflicts_are_429_and_409_with_the_message():
    app = build_api(Refusing(), ServeConfig())
    full = post(app, "/sessions", SESSION)
    assert full.status == 429 and "live.max_sessions=2" in full.json()["detail"]
    busy = post(app, "/training/jobs", {"kind": "history"})
    assert busy.status == 409 and "training-1 is running" in busy.json()["detail"]
